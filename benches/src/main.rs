//! `spool-bench`: throughput and latency of Spool, NATS JetStream and Redis Streams,
//! measured by the same loops in the same process.
//!
//! ```text
//! spool-bench scale [--topics N] [--partitions N] [--json]
//! spool-bench fanout [--subscribers N] [--members N] [--rate N] [--duration SECS] [--json]
//! spool-bench lowload [--rate N] [--duration SECS] [--fsync always|interval|never] [--json]
//! spool-bench queue [--target spool|nats|redis] [--consumers N] [--partitions N]
//!     [--count N] [--message-size BYTES] [--fsync always|interval|never] [--json]
//! spool-bench delayed [--count N] [--spread SECS] [--message-size BYTES] [--consumers N]
//!     [--restart] [--json]
//! spool-bench produce|consume|e2e [--target spool|nats|redis] [--server URL]
//!     [--producers N] [--consumers N] [--partitions N] [--message-size BYTES]
//!     [--batch-size N] [--linger-ms N] [--fsync always|interval|never]
//!     [--count N | --duration SECS] [--rate MSGS_PER_SEC] [--json]
//! ```
//!
//! - `produce`: acknowledged appends; latency from (intended) send to acknowledgement.
//! - `consume`: reads a topic pre-filled (untimed) with `--count` messages from its start;
//!   latency is the wait per delivery batch (stalls), not a per-message figure.
//! - `scale`: see [`scale`]: memory, files, disk and restart times of many partitions.
//! - `fanout`: see [`fanout`]: delivery latency and memory with many Subscribe streams and
//!   many group members at once.
//! - `lowload`: see [`lowload`]: one durable unary append at a time beside the disk's own
//!   `pwrite` + `fdatasync`.
//! - `queue`: see [`queue`]: workers acking a pre-filled queue record by record.
//! - `delayed`: see [`delayed`]: millions of records due over minutes: broker memory and
//!   delivery lateness.
//! - `e2e`: consumers subscribed first; each payload carries its (intended) send time and
//!   the latency is delivery time minus that.
//! - `--rate` makes producers open-loop: message k of a producer is due at
//!   `start + k / (rate / producers)` and its latency counts from then, so queueing in
//!   the client is not hidden (no coordinated omission).
//!
//! With no `--server`, Spool runs as a `spoold` child process on a temporary directory;
//! NATS and Redis are expected where `benches/peers/*.sh start` put them.
//!
//! # Layout
//! - `workload`: the timed loops and the [`workload::Sender`]/[`workload::Source`]/
//!   [`workload::Target`] traits every target implements.
//! - `report`: histograms (hdrhistogram, microseconds), the progress line, text and JSON.
//! - `spool`: the `spoold` child process and the Spool target (Producer, Subscribe).
//! - `nats`: JetStream (async-nats): async publishes, pull consumers.
//! - `redis`: Redis Streams (redis-rs): pipelined XADD, XREAD.

mod delayed;
mod fanout;
mod lowload;
mod nats;
mod payload;
mod queue;
mod redis;
mod report;
mod scale;
mod spool;
mod workload;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

use crate::workload::{Mode, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Produce,
    Consume,
    E2e,
    /// Cost as partitions grow: `--topics` × `--partitions` on one spoold (Spool only).
    Scale,
    /// Many readers at once: `--subscribers` streams, then `--members` group members.
    Fanout,
    /// One durable unary append at a time at `--rate`, beside the disk's pwrite + fdatasync.
    Lowload,
    /// `--consumers` workers drain `--count` pre-filled records, acking each one.
    Queue,
    /// `--count` records due over `--duration` seconds: broker memory and lateness.
    Delayed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    Spool,
    Nats,
    Redis,
}

/// Spool's stored compression of the bench topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Codec {
    None,
    Lz4,
    Zstd,
}

/// Durability asked of the target: Spool's topic fsync policy; Redis's `appendfsync`
/// (always, everysec, no); NATS 2.9 has no per-write setting and ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    Always,
    Interval,
    Never,
}

impl Fsync {
    pub fn spool_name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Interval => "interval",
            Fsync::Never => "never",
        }
    }
}

/// Benchmarks Spool, NATS JetStream and Redis Streams with the same workload.
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Cli {
    /// produce: acknowledged appends; consume: read a pre-filled topic; e2e: send to delivery.
    mode: ModeArg,
    #[arg(long, value_enum, default_value = "spool")]
    target: TargetArg,
    /// Server address [spool: start a spoold child; nats: nats://127.0.0.1:14222;
    /// redis: redis://127.0.0.1:16379].
    #[arg(long)]
    server: Option<String>,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Subscribe streams on one partition (fanout).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Members of one group on a topic of as many partitions (fanout).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Topics to create (scale).
    #[arg(long, default_value_t = 1000)]
    topics: u32,
    /// Partitions (Spool), streams (NATS) or stream keys (Redis); per topic with scale.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    message_size: usize,
    /// Messages per batch: Spool producer batch, Redis pipeline, read batch of every
    /// target. NATS publishes one message at a time (with 5 batches' worth of acks in flight).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Spool producer linger: how long a partial batch waits for more records.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[arg(long, value_enum, default_value = "always")]
    fsync: Fsync,
    /// What messages hold: one random-letter block (throughput), or distinct JSON events or
    /// log lines (compression runs).
    #[arg(long, value_enum, default_value = "letters")]
    payload: payload::Payload,
    /// Spool: the topic's stored compression.
    #[arg(long, value_enum, default_value = "none")]
    compression: Codec,
    /// Messages to send (produce, e2e) or pre-fill and read (consume).
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Send for this many seconds instead (produce, e2e); consume: read at most this long.
    #[arg(long)]
    duration: Option<f64>,
    /// Open loop: total messages per second across producers.
    #[arg(long)]
    rate: Option<f64>,
    /// Print exactly one JSON object on stdout (everything else goes to stderr).
    #[arg(long)]
    json: bool,
    /// delayed: the records come due over this many seconds [default: 600].
    #[arg(long)]
    spread: Option<f64>,
    /// delayed: kill -9 and restart the broker once every record is deferred.
    #[arg(long)]
    restart: bool,
    /// Also write the latency distribution (percentile, microseconds) as JSON to this file.
    #[arg(long)]
    latency_out: Option<std::path::PathBuf>,
}

const DEFAULT_COUNT: u64 = 100_000;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mode = match cli.mode {
        ModeArg::Produce => Mode::Produce,
        ModeArg::Consume => Mode::Consume,
        ModeArg::E2e => Mode::E2e,
        ModeArg::Scale => {
            let r = runtime.block_on(scale::run(cli.topics, cli.partitions))?;
            println!("{}", if cli.json { r.json() } else { r.text() });
            return Ok(());
        }
        ModeArg::Fanout => {
            let rate = cli.rate.unwrap_or(100.0);
            let duration = Duration::from_secs_f64(cli.duration.unwrap_or(10.0));
            let phases =
                runtime.block_on(fanout::run(cli.subscribers, cli.members, rate, duration))?;
            print_all(cli.json, &phases, fanout::Phase::text, fanout::Phase::json);
            return Ok(());
        }
        ModeArg::Queue => {
            let shape = queue::Shape {
                consumers: cli.consumers.max(1),
                partitions: cli.partitions.max(1),
                count: cli.count.unwrap_or(DEFAULT_COUNT),
                size: cli.message_size,
                fsync: cli.fsync,
            };
            let server = cli.server.as_deref();
            let r = runtime.block_on(async {
                match cli.target {
                    TargetArg::Spool => queue::spool(server, &shape).await,
                    TargetArg::Nats => {
                        queue::nats(server.unwrap_or(nats::DEFAULT_SERVER), &shape).await
                    }
                    TargetArg::Redis => {
                        queue::redis(server.unwrap_or(redis::DEFAULT_SERVER), &shape).await
                    }
                }
            })?;
            println!(
                "{}",
                if cli.json {
                    r.json().to_string()
                } else {
                    r.text()
                }
            );
            return Ok(());
        }
        ModeArg::Delayed => {
            let shape = delayed::Shape {
                count: cli.count.unwrap_or(10_000_000),
                spread: Duration::from_secs_f64(cli.spread.unwrap_or(600.0)),
                size: cli.message_size,
                consumers: cli.consumers.max(1),
                restart: cli.restart,
            };
            let r = runtime.block_on(delayed::run(&shape))?;
            println!(
                "{}",
                if cli.json {
                    r.json().to_string()
                } else {
                    r.text()
                }
            );
            return Ok(());
        }
        ModeArg::Lowload => {
            let rate = cli.rate.unwrap_or(1000.0);
            let duration = Duration::from_secs_f64(cli.duration.unwrap_or(10.0));
            let rounds = runtime.block_on(lowload::run(rate, duration, cli.fsync))?;
            print_all(
                cli.json,
                &rounds,
                lowload::Round::text,
                lowload::Round::json,
            );
            return Ok(());
        }
    };
    if cli.producers == 0 || cli.consumers == 0 || cli.partitions == 0 || cli.batch_size == 0 {
        bail!("--producers, --consumers, --partitions and --batch-size must be at least 1");
    }
    if cli.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be a positive number of messages per second");
    }
    let duration = match cli.duration {
        Some(d) if d.is_finite() && d > 0.0 => Some(Duration::from_secs_f64(d)),
        Some(_) => bail!("--duration must be a positive number of seconds"),
        None => None,
    };
    if mode == Mode::Consume && duration.is_some() && cli.count.is_none() {
        eprintln!("consume with --duration: pre-filling {DEFAULT_COUNT} messages (set --count)");
    }
    let workload = Workload {
        mode,
        producers: cli.producers,
        consumers: cli.consumers,
        partitions: cli.partitions,
        message_size: cli.message_size,
        batch_size: cli.batch_size,
        count: cli.count.unwrap_or(DEFAULT_COUNT),
        duration,
        rate: cli.rate,
        payload: cli.payload,
    };
    let summary = runtime.block_on(run(&cli, &workload))?;
    if let Some(path) = &cli.latency_out {
        std::fs::write(path, summary.cdf().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if cli.json {
        eprintln!("{}", summary.text());
        println!("{}", summary.json());
    } else {
        println!("{}", summary.text());
    }
    Ok(())
}

/// Prints one line per result, or one JSON array of them.
fn print_all<T>(
    json: bool,
    results: &[T],
    text: fn(&T) -> String,
    to_json: fn(&T) -> serde_json::Value,
) {
    if json {
        let all: Vec<serde_json::Value> = results.iter().map(to_json).collect();
        println!("{}", serde_json::Value::Array(all));
    } else {
        for r in results {
            println!("{}", text(r));
        }
    }
}

async fn run(cli: &Cli, w: &Workload) -> anyhow::Result<report::Summary> {
    let run_id = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    match cli.target {
        TargetArg::Spool => {
            let (spoold, endpoint) = match &cli.server {
                Some(s) => (None, s.clone()),
                None => {
                    let d = tokio::task::block_in_place(|| spool::Spoold::start(cli.fsync))?;
                    let e = d.endpoint().to_string();
                    eprintln!("started spoold at {e} (fsync {})", cli.fsync.spool_name());
                    (Some(d), e)
                }
            };
            let linger = Duration::from_millis(cli.linger_ms);
            let target = Arc::new(
                spool::Spool::setup(&endpoint, &run_id, w, linger, (cli.fsync, cli.compression))
                    .await?,
            );
            let result = workload::run(Arc::clone(&target), w).await;
            if spoold.is_none()
                && let Err(e) = target.cleanup().await
            {
                eprintln!("warning: deleting the bench topic: {e:#}");
            }
            drop(target);
            tokio::task::block_in_place(|| drop(spoold));
            result
        }
        TargetArg::Nats => {
            let server = cli.server.as_deref().unwrap_or(nats::DEFAULT_SERVER);
            if cli.fsync != Fsync::Never {
                eprintln!(
                    "note: nats-server 2.9 has no per-write sync; it acknowledges from the page \
                     cache whatever --fsync says"
                );
            }
            let target = Arc::new(nats::Nats::setup(server, &run_id, w).await?);
            let result = workload::run(Arc::clone(&target), w).await;
            if let Err(e) = target.cleanup().await {
                eprintln!("warning: deleting the bench streams: {e:#}");
            }
            result
        }
        TargetArg::Redis => {
            let server = cli.server.as_deref().unwrap_or(redis::DEFAULT_SERVER);
            let target = Arc::new(redis::Redis::setup(server, &run_id, w, cli.fsync).await?);
            let result = workload::run(Arc::clone(&target), w).await;
            if let Err(e) = target.cleanup().await {
                eprintln!("warning: deleting the bench keys: {e:#}");
            }
            result
        }
    }
}
