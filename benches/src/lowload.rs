//! `spool-bench lowload`: the latency of one durable append when nothing else is going on,
//! beside what the disk itself takes. At `--rate` requests per second for `--duration`
//! seconds (open loop: a request sent late, because the one before overran its slot,
//! counts its latency from its slot; one sent on time, from when the pacer woke),
//! alternately: the disk alone (a 4 KiB `pwrite` then `fdatasync`, appending to a file in
//! the broker's data directory, so the same file system) and Spool (a unary `Append` of
//! one 1 KiB record, one in flight, to a topic with `--fsync`: `always` by default, `never`
//! isolates the rest of the path). Each is run `ROUNDS` times, interleaved, so both see
//! the same machine.

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
    let client = Client::connect(spoold.endpoint()).await?;
    let topic = "lowload";
    client
        .create_topic(topic, 1, TopicConfig::default())
        .await?;
    let probe = spoold.data_dir().join("disk-probe");
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let path = probe.clone();
        let disk = tokio::task::spawn_blocking(move || disk_round(&path, rate, duration)).await??;
        rounds.push(Round {
            what: "disk: 4 KiB pwrite + fdatasync",
            latency: disk,
        });
        rounds.push(Round {
            what: match fsync {
                Fsync::Always => "spool: unary Append, 1 KiB, fsync always",
                Fsync::Interval => "spool: unary Append, 1 KiB, fsync interval",
                Fsync::Never => "spool: unary Append, 1 KiB, fsync never",
            },
            latency: append_round(&client, topic, rate, duration).await?,
        });
    }
    drop(client);
    tokio::task::block_in_place(|| drop(spoold));
    Ok(rounds)
}

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

async fn append_round(
    client: &Client,
    topic: &str,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let value = Bytes::from(vec![0x5Au8; RECORD]);
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
        client
            .append(AppendRequest {
                topic: topic.to_string(),
                partition: Some(0),
                records: vec![Record {
                    value: value.clone(),
                    ..Record::default()
                }],
                ..AppendRequest::default()
            })
            .await?;
        report::record(&mut h, at.elapsed().as_nanos() as u64, 1);
    }
    Ok(h)
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
