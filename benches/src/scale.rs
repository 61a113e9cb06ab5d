//! `spool-bench scale`: what a broker costs as its partitions grow, tried as a new user
//! would: `--topics` topics of `--partitions` partitions created on one `spoold`, one record
//! appended to each partition, then the broker's memory (`VmRSS`, `RssAnon`), open files
//! and disk blocks; a graceful stop and start (time until it serves again); one more record
//! per partition, `kill -9` and start (time until it serves again). Every partition is read
//! back after each start.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use spool_client::Client;
use spool_client::v1::{AppendRequest, ReadRequest, Record, TopicConfig};

use crate::spool::Spoold;

/// Requests in flight while creating, appending and reading.
const CONCURRENCY: usize = 32;

pub struct ScaleReport {
    pub partitions: u64,
    pub create: Duration,
    pub append: Duration,
    pub rss_kib: u64,
    pub rss_anon_kib: u64,
    pub fds: u64,
    pub disk_kib: u64,
    pub graceful_stop: Duration,
    pub graceful_start: Duration,
    pub crash_start: Duration,
}

pub async fn run(topics: u32, partitions: u32) -> anyhow::Result<ScaleReport> {
    let mut spoold = tokio::task::block_in_place(|| Spoold::start_with(&[]))?;
    let client = Client::connect(spoold.endpoint()).await?;
    let names: Vec<String> = (0..topics).map(|t| format!("scale-{t:05}")).collect();
    let began = Instant::now();
    futures::stream::iter(names.iter())
        .map(|n| {
            let client = client.clone();
            async move {
                client
                    .create_topic(n, partitions, TopicConfig::default())
                    .await
                    .with_context(|| format!("creating topic {n}"))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let create = began.elapsed();
    let began = Instant::now();
    append_everywhere(&client, &names, partitions, "first").await?;
    let append = began.elapsed();
    let (rss_kib, rss_anon_kib) = spoold.memory_kib()?;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", spoold.pid()))?.count() as u64;
    let disk_kib = disk_kib(spoold.data_dir())?;
    drop(client);

    let began = Instant::now();
    tokio::task::block_in_place(|| spoold.stop())?;
    let graceful_stop = began.elapsed();
    let began = Instant::now();
    tokio::task::block_in_place(|| spoold.start_again())?;
    let graceful_start = began.elapsed();
    let client = Client::connect(spoold.endpoint()).await?;
    check_everywhere(&client, &names, partitions, 1).await?;
    append_everywhere(&client, &names, partitions, "second").await?;
    drop(client);

    tokio::task::block_in_place(|| spoold.kill())?;
    let began = Instant::now();
    tokio::task::block_in_place(|| spoold.start_again())?;
    let crash_start = began.elapsed();
    let client = Client::connect(spoold.endpoint()).await?;
    check_everywhere(&client, &names, partitions, 2).await?;
    Ok(ScaleReport {
        partitions: u64::from(topics) * u64::from(partitions),
        create,
        append,
        rss_kib,
        rss_anon_kib,
        fds,
        disk_kib,
        graceful_stop,
        graceful_start,
        crash_start,
    })
}

/// Every (topic, partition) pair.
fn everywhere(names: &[String], partitions: u32) -> impl Iterator<Item = (&String, u32)> {
    names
        .iter()
        .flat_map(move |n| (0..partitions).map(move |p| (n, p)))
}

async fn append_everywhere(
    client: &Client,
    names: &[String],
    partitions: u32,
    value: &'static str,
) -> anyhow::Result<()> {
    futures::stream::iter(everywhere(names, partitions))
        .map(|(n, p)| {
            let client = client.clone();
            async move {
                let req = AppendRequest {
                    topic: n.clone(),
                    partition: Some(p),
                    records: vec![Record {
                        value: Bytes::from_static(value.as_bytes()),
                        ..Record::default()
                    }],
                    ..AppendRequest::default()
                };
                client
                    .append(req)
                    .await
                    .with_context(|| format!("appending to {n}/{p}"))
                    .map(drop)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Reads every partition from 0 and checks it holds exactly `want` records.
async fn check_everywhere(
    client: &Client,
    names: &[String],
    partitions: u32,
    want: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(everywhere(names, partitions))
        .map(|(n, p)| {
            let client = client.clone();
            async move {
                let req = ReadRequest {
                    topic: n.clone(),
                    partition: p,
                    offset: 0,
                    max_records: 10,
                    ..ReadRequest::default()
                };
                let got = client.read(req).await?.records.len();
                ensure!(got == want, "{n}/{p} holds {got} records, not {want}");
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Disk blocks in use under `dir`, in KiB (what preallocation really costs).
fn disk_kib(dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512 / 1024;
            }
        }
    }
    Ok(total)
}

impl ScaleReport {
    pub fn text(&self) -> String {
        let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        format!(
            "partitions {}\ncreate {}\nappend one record each {}\nRSS {} MiB (anonymous {} MiB)\nopen files {}\ndisk {} MiB\ngraceful stop {}\nstart after graceful stop {}\nstart after kill -9 {}",
            self.partitions,
            secs(self.create),
            secs(self.append),
            self.rss_kib / 1024,
            self.rss_anon_kib / 1024,
            self.fds,
            self.disk_kib / 1024,
            secs(self.graceful_stop),
            secs(self.graceful_start),
            secs(self.crash_start),
        )
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "partitions": self.partitions,
            "create_s": self.create.as_secs_f64(),
            "append_s": self.append.as_secs_f64(),
            "rss_kib": self.rss_kib,
            "rss_anon_kib": self.rss_anon_kib,
            "fds": self.fds,
            "disk_kib": self.disk_kib,
            "graceful_stop_s": self.graceful_stop.as_secs_f64(),
            "graceful_start_s": self.graceful_start.as_secs_f64(),
            "crash_start_s": self.crash_start.as_secs_f64(),
        })
        .to_string()
    }
}
