//! Spool as a target: a `spoold` child process on a temporary directory (unless
//! `--server` names one), the client's pipelined [`Producer`] to send and raw `Subscribe`
//! streams to read.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use spool_client::v1::start_position::Kind;
use spool_client::v1::{
    AppendRequest, Compression, FsyncPolicy, Record, StartPosition, SubscribeRequest, TopicConfig,
};
use spool_client::{Client, Producer, ProducerOptions, ProducerRecord};

use crate::Fsync;
use crate::workload::{AckFuture, Sender, Source, Target, Workload};

/// A `spoold` started by the bench, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Spoold {
    child: Child,
    endpoint: String,
    binary: PathBuf,
    args: Vec<String>,
    data: tempfile::TempDir,
}

impl Spoold {
    /// Starts `spoold` on a fresh temporary data directory and ephemeral loopback ports.
    pub fn start(fsync: Fsync) -> anyhow::Result<Spoold> {
        Spoold::start_with(&["--fsync", fsync.spool_name()])
    }

    /// Starts `spoold` with extra flags on a fresh temporary data directory.
    pub fn start_with(args: &[&str]) -> anyhow::Result<Spoold> {
        let binary = find_spoold()?;
        let data = match std::env::var_os("SPOOL_BENCH_DIR") {
            Some(dir) => tempfile::Builder::new()
                .prefix("spool-bench-")
                .tempdir_in(dir),
            None => tempfile::Builder::new().prefix("spool-bench-").tempdir(),
        }
        .context("creating the broker's temporary data directory")?;
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, endpoint) = spawn(&binary, data.path(), &args)?;
        Ok(Spoold {
            child,
            endpoint,
            binary,
            args,
            data,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's resident and anonymous memory (`VmRSS`, `RssAnon`), KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        memory_of(self.pid())
    }

    /// Stops it gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "spoold exited with {status}");
        Ok(())
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts it again on the same data directory; returns once it serves gRPC.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let (child, endpoint) = spawn(&self.binary, self.data.path(), &self.args)?;
        self.child = child;
        self.endpoint = endpoint;
        Ok(())
    }
}

/// A process's resident and anonymous memory (`VmRSS`, `RssAnon`), KiB.
pub fn memory_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((kib("VmRSS:"), kib("RssAnon:")))
}

/// Spawns `spoold` on `data` and waits (up to ten minutes: a big data directory recovers
/// first) for its `serving grpc=ADDR` line.
fn spawn(binary: &Path, data: &Path, args: &[String]) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(binary)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(args)
        .env(
            "SPOOL_LOG",
            std::env::var("SPOOL_LOG").unwrap_or("info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stderr = child.stderr.take().context("spoold's stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining the child's log so it never blocks on a full pipe; pass it through
    // when SPOOL_BENCH_VERBOSE is set.
    std::thread::spawn(move || {
        let verbose = std::env::var_os("SPOOL_BENCH_VERBOSE").is_some();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if verbose {
                eprintln!("spoold: {line}");
            }
            if line.contains("serving")
                && let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("grpc="))
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(Ok(addr.to_string()));
            } else if let Some(tx) = &tx
                && (line.contains("ERROR") || line.contains("Error"))
            {
                let _ = tx.send(Err(line));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(Ok(addr)) => Ok((child, format!("http://{addr}"))),
        Ok(Err(line)) => {
            let _ = child.kill();
            bail!("spoold failed to start: {line}")
        }
        Err(_) => {
            let _ = child.kill();
            bail!(
                "spoold ({}) did not report `serving grpc=ADDR`",
                binary.display()
            )
        }
    }
}

impl Drop for Spoold {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `spoold` next to this executable (cargo puts both in `target/<profile>/`), else on PATH.
fn find_spoold() -> anyhow::Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let beside = dir.join("spoold");
        if is_executable(&beside) {
            return Ok(beside);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("spoold");
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "no spoold next to spool-bench or on PATH: build it first with \
         `cargo build --release -p spool-broker --bin spoold` (same profile as spool-bench), \
         or pass --server URL"
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// One run's topic on a Spool broker.
pub struct Spool {
    endpoint: String,
    topic: String,
    options: ProducerOptions,
    batch_size: usize,
}

impl Spool {
    /// Creates this run's topic with the run's fsync policy.
    pub async fn setup(
        endpoint: &str,
        run_id: &str,
        w: &Workload,
        linger: Duration,
        (fsync, codec): (Fsync, crate::Codec),
    ) -> anyhow::Result<Spool> {
        let client = connect(endpoint).await?;
        let topic = format!("bench-{run_id}");
        let policy = match fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Interval => FsyncPolicy::Interval,
            Fsync::Never => FsyncPolicy::Never,
        };
        client
            .create_topic(
                &topic,
                w.partitions,
                TopicConfig {
                    fsync: policy as i32,
                    compression: match codec {
                        crate::Codec::None => Compression::None,
                        crate::Codec::Lz4 => Compression::Lz4,
                        crate::Codec::Zstd => Compression::Zstd,
                    } as i32,
                    ..TopicConfig::default()
                },
            )
            .await
            .with_context(|| format!("creating topic {topic}"))?;
        let options = ProducerOptions {
            batch_records: w.batch_size,
            // Never cut a batch by bytes before it has --batch-size records (up to 16 MiB).
            batch_bytes: (w.batch_size * w.message_size).clamp(1 << 20, 16 << 20),
            linger,
            max_in_flight: 32,
            // Accepted and unanswered records: the five batches in flight per partition
            // and as many queued behind them.
            buffer_records: w.batch_size * 10,
            ..ProducerOptions::default()
        };
        Ok(Spool {
            endpoint: endpoint.to_string(),
            topic,
            options,
            batch_size: w.batch_size,
        })
    }

    /// Deletes the run's topic (matters with `--server`; a bench-started broker goes away).
    pub async fn cleanup(&self) -> anyhow::Result<()> {
        let client = connect(&self.endpoint).await?;
        let info = client.describe_topic(&self.topic).await?;
        let stored: u64 = info.partition_info.iter().map(|p| p.size_bytes).sum();
        // What the topic takes on disk (compression runs compare it with the payload).
        eprintln!("spool topic {}: {stored} bytes stored", self.topic);
        client.delete_topic(&self.topic).await?;
        Ok(())
    }
}

async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    Client::connect(endpoint)
        .await
        .with_context(|| format!("connecting to spool at {endpoint}"))
}

pub enum SpoolSender {
    /// The client library's batching, idempotent producer (what users run).
    Producer(Producer),
    /// Diagnostic (`SPOOL_BENCH_RAW_APPEND=1`): one `AppendRequest` per bench batch on a
    /// raw AppendStream, so the Producer's per-record cost can be told from the broker's.
    Raw(RawAppender),
}

/// A raw AppendStream: requests go out in order, answers come back in order and resolve
/// the oldest waiting batch. Up to 32 requests in flight, like the Producer's default.
pub struct RawAppender {
    topic: String,
    requests: tokio::sync::mpsc::Sender<AppendRequest>,
    waiting: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<anyhow::Result<()>>>,
    window: std::sync::Arc<tokio::sync::Semaphore>,
}

impl RawAppender {
    async fn open(client: &Client, topic: &str) -> anyhow::Result<RawAppender> {
        let (requests, rx) = tokio::sync::mpsc::channel::<AppendRequest>(32);
        let mut responses = client
            .raw()
            .append_stream(tokio_stream_from(rx))
            .await
            .context("opening AppendStream")?
            .into_inner();
        let (waiting, mut waiters) =
            tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<anyhow::Result<()>>>(64);
        tokio::spawn(async move {
            while let Some(w) = waiters.recv().await {
                let r = match responses.message().await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(anyhow::anyhow!("AppendStream ended")),
                    Err(s) => Err(anyhow::anyhow!("append failed: {s}")),
                };
                let failed = r.is_err();
                let _ = w.send(r);
                if failed {
                    return;
                }
            }
        });
        Ok(RawAppender {
            topic: topic.to_string(),
            requests,
            waiting,
            window: std::sync::Arc::new(tokio::sync::Semaphore::new(32)),
        })
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Sender for SpoolSender {
    async fn send(&mut self, partition: u32, values: Vec<Bytes>) -> anyhow::Result<AckFuture> {
        let producer = match self {
            SpoolSender::Producer(p) => p,
            SpoolSender::Raw(raw) => {
                let permit = std::sync::Arc::clone(&raw.window).acquire_owned().await?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                raw.waiting.send(tx).await.context("AppendStream closed")?;
                let req = AppendRequest {
                    topic: raw.topic.clone(),
                    partition: Some(partition),
                    records: values
                        .into_iter()
                        .map(|value| Record {
                            value,
                            ..Record::default()
                        })
                        .collect(),
                    ..AppendRequest::default()
                };
                raw.requests
                    .send(req)
                    .await
                    .context("AppendStream closed")?;
                return Ok(Box::pin(async move {
                    let r = rx.await.context("AppendStream closed");
                    drop(permit);
                    r?
                }));
            }
        };
        let pending = producer
            .enqueue_batch(
                values
                    .into_iter()
                    .map(|v| ProducerRecord::new(v).partition(partition)),
            )
            .await?;
        Ok(Box::pin(async move {
            pending.await?;
            Ok(())
        }))
    }
}

pub struct SpoolSource {
    stream: tonic::Streaming<spool_client::v1::SubscribeResponse>,
}

impl Source for SpoolSource {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> anyhow::Result<()> {
        loop {
            let m = self
                .stream
                .message()
                .await?
                .context("the broker ended the subscription")?;
            if m.records.is_empty() {
                continue;
            }
            out.extend(m.records.into_iter().map(|r| r.value));
            return Ok(());
        }
    }
}

impl Target for Spool {
    type Sender = SpoolSender;
    type Source = SpoolSource;

    fn name(&self) -> &'static str {
        "spool"
    }

    async fn sender(&self, _producer: usize) -> anyhow::Result<SpoolSender> {
        // One connection per producer, as separate processes would have.
        let client = connect(&self.endpoint).await?;
        if std::env::var_os("SPOOL_BENCH_RAW_APPEND").is_some() {
            return Ok(SpoolSender::Raw(
                RawAppender::open(&client, &self.topic).await?,
            ));
        }
        let producer = Producer::new(&client, &self.topic, self.options.clone()).await?;
        Ok(SpoolSender::Producer(producer))
    }

    async fn source(&self, partitions: Vec<u32>) -> anyhow::Result<SpoolSource> {
        let client = connect(&self.endpoint).await?;
        let req = SubscribeRequest {
            topic: self.topic.clone(),
            partitions,
            start: Some(StartPosition {
                kind: Kind::Earliest as i32,
                offset: 0,
                timestamp_ms: 0,
            }),
            group: String::new(),
            max_batch_records: self.batch_size.min(u32::MAX as usize) as u32,
        };
        let stream = client
            .raw()
            .subscribe(req)
            .await
            .context("subscribing")?
            .into_inner();
        Ok(SpoolSource { stream })
    }
}
