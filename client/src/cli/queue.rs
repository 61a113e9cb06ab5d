//! `spool queue create|list|describe|delete|receive|work|redrive`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use spool_client::v1::{
    QueueConfig, QueueInfo, QueueOrdering, ReceiveRequest, SettleAction, SettleRequest,
    SettleResult, Settlement, StartPosition, start_position,
};
use spool_client::{Client, Message, QueueConsumer, QueueOptions};
use tokio::io::AsyncWriteExt;

use super::output::{self, Table};

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Create a queue over a topic (and its dead-letter topic).
    #[command(after_help = "\
Examples:
  spool queue create orders billing --lease 2m --max-deliveries 3
  spool queue create events ordered --ordering key --from latest")]
    Create(CreateArgs),
    /// List queues with their counts.
    #[command(after_help = "Example:\n  spool queue list --topic orders")]
    List {
        /// Only this topic's queues.
        #[arg(long, short)]
        topic: Option<String>,
    },
    /// Show a queue's config, counts, partitions and workers.
    #[command(after_help = "Example:\n  spool queue describe orders billing")]
    Describe { topic: String, queue: String },
    /// Delete a queue (the topic and its dead-letter topic stay).
    #[command(after_help = "Example:\n  spool queue delete orders billing")]
    Delete { topic: String, queue: String },
    /// Lease records, print them, and ack them (or leave them leased with --no-ack).
    #[command(after_help = "Example:\n  spool queue receive orders billing -n 10 --wait 5s")]
    Receive(ReceiveArgs),
    /// Run a command per record: the value on stdin; exit 0 acks, any other exit nacks.
    #[command(after_help = "\
Example:
  spool queue work orders billing --exec 'jq .total' --concurrency 4

The command runs under `sh -c` with the record's value on stdin and SPOOL_TOPIC,
SPOOL_QUEUE, SPOOL_PARTITION, SPOOL_OFFSET, SPOOL_ATTEMPT and SPOOL_KEY (UTF-8, else
empty) in its environment. Exit 0 acks the record; any other exit nacks it (it comes
back after the queue's backoff, and is dead-lettered after max deliveries). The lease is
extended while the command runs.")]
    Work(WorkArgs),
    /// Make the queue's dead-lettered records available again, attempts reset.
    #[command(after_help = "\
Example:
  spool queue redrive orders billing --rate 200 --wait

Every dead letter of the queue written since the last redrive (or since the queue was
created) is delivered again by the queue at its original offset, with its attempt count
starting again at 1. The dead-letter topic keeps its copies; the source topic gets
nothing new. The broker does it in the background at up to --rate records a second;
--wait shows its progress until it is done.")]
    Redrive(RedriveArgs),
}

#[derive(Args, Debug)]
pub struct RedriveArgs {
    topic: String,
    queue: String,
    /// Records made available again per second at most (default: the broker's, 1,000).
    #[arg(long)]
    rate: Option<u32>,
    /// Wait until the redrive is done, showing its progress.
    #[arg(long)]
    wait: bool,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    topic: String,
    queue: String,
    /// How long a delivery is leased (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// Deliveries without an ack before a record is dead-lettered.
    #[arg(long)]
    max_deliveries: Option<u32>,
    /// The first retry delay.
    #[arg(long, value_parser = humantime::parse_duration)]
    backoff_min: Option<Duration>,
    /// The longest retry delay.
    #[arg(long, value_parser = humantime::parse_duration)]
    backoff_max: Option<Duration>,
    /// The dead-letter topic (default TOPIC.QUEUE.dlq).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Deliver each record this long after its timestamp.
    #[arg(long, value_parser = humantime::parse_duration)]
    delivery_delay: Option<Duration>,
    /// One record per key at a time, in order.
    #[arg(long, value_enum, default_value_t = OrderingArg::None)]
    ordering: OrderingArg,
    /// The most records leased at once per partition.
    #[arg(long)]
    max_leased: Option<u32>,
    /// Where the queue starts in each partition.
    #[arg(long, value_enum, default_value_t = FromArg::Earliest)]
    from: FromArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OrderingArg {
    None,
    Key,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FromArg {
    Earliest,
    Latest,
}

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    topic: String,
    queue: String,
    /// Records to lease at most.
    #[arg(long, short = 'n', default_value_t = 10)]
    count: u32,
    /// How long to wait for the first record.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Leave the records leased (they come back when the lease ends).
    #[arg(long)]
    no_ack: bool,
    /// One JSON object per record (with attempt and lease_id) instead of the value.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct WorkArgs {
    topic: String,
    queue: String,
    /// The command to run per record (under `sh -c`).
    #[arg(long)]
    exec: String,
    /// Records handled at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Stop after this many records were settled (default: run until interrupted).
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// The worker's name shown by `spool queue describe`.
    #[arg(long, default_value = "spool-cli")]
    consumer: String,
}

pub async fn run(client: &Client, cmd: QueueCommand) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create(a) => {
            let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u32);
            let config = QueueConfig {
                lease_ms: ms(a.lease),
                max_deliveries: a.max_deliveries.unwrap_or(0),
                retry_backoff_min_ms: ms(a.backoff_min),
                retry_backoff_max_ms: ms(a.backoff_max),
                dead_letter_topic: a.dead_letter_topic.unwrap_or_default(),
                delivery_delay_ms: a.delivery_delay.map_or(0, |d| d.as_millis() as u64),
                ordering: match a.ordering {
                    OrderingArg::None => QueueOrdering::None,
                    OrderingArg::Key => QueueOrdering::Key,
                } as i32,
                max_leased: a.max_leased.unwrap_or(0),
            };
            let start = StartPosition {
                kind: match a.from {
                    FromArg::Earliest => start_position::Kind::Earliest,
                    FromArg::Latest => start_position::Kind::Latest,
                } as i32,
                ..StartPosition::default()
            };
            let q = client
                .create_queue(&a.topic, &a.queue, config, Some(start))
                .await
                .with_context(|| format!("cannot create queue {}/{}", a.topic, a.queue))?;
            let dlq = q.config.map(|c| c.dead_letter_topic).unwrap_or_default();
            println!(
                "queue {}/{} ready (dead letters to {dlq})",
                a.topic, a.queue
            );
            Ok(())
        }
        QueueCommand::List { topic } => {
            let queues = client.list_queues(topic.as_deref()).await?;
            let mut t = Table::new(&[
                ("TOPIC", false),
                ("QUEUE", false),
                ("READY", true),
                ("DELAYED", true),
                ("LEASED", true),
                ("ACKED", true),
                ("DEAD", true),
            ]);
            for q in queues {
                t.row(vec![
                    q.topic,
                    q.queue,
                    output::count(q.ready),
                    output::count(q.delayed),
                    output::count(q.leased),
                    output::count(q.acked_total),
                    output::count(q.dead_lettered_total),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
        QueueCommand::Describe { topic, queue } => {
            let q = client.describe_queue(&topic, &queue).await?;
            print!("{}", describe(&q));
            Ok(())
        }
        QueueCommand::Delete { topic, queue } => {
            client.delete_queue(&topic, &queue).await?;
            println!("queue {topic}/{queue} deleted");
            Ok(())
        }
        QueueCommand::Receive(a) => receive(client, a).await,
        QueueCommand::Work(a) => work(client, a).await,
        QueueCommand::Redrive(a) => redrive(client, a).await,
    }
}

async fn redrive(client: &Client, a: RedriveArgs) -> anyhow::Result<()> {
    let before = client
        .describe_queue(&a.topic, &a.queue)
        .await?
        .redriven_total;
    let r = client
        .redrive_queue(&a.topic, &a.queue, a.rate.unwrap_or(0))
        .await
        .with_context(|| format!("cannot redrive queue {}/{}", a.topic, a.queue))?;
    let letters = r.end_offset - r.start_offset;
    println!(
        "redriving queue {}/{}: dead-letter offsets {}..{} ({letters} to look at)",
        a.topic, a.queue, r.start_offset, r.end_offset
    );
    if !a.wait || letters == 0 {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(letters);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} dead letters looked at, {per_sec}, {eta} left",
        )
        .expect("a valid template"),
    );
    loop {
        let q = client.describe_queue(&a.topic, &a.queue).await?;
        bar.set_position(letters.saturating_sub(q.redrive_remaining));
        if q.redrive_remaining == 0 {
            bar.finish_and_clear();
            println!(
                "redrive done: {} records available again",
                q.redriven_total - before
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn describe(q: &QueueInfo) -> String {
    let c = q.config.clone().unwrap_or_default();
    let mut out = format!(
        "queue {}/{}\n  lease {} ms, max deliveries {}, backoff {}..{} ms, ordering {}, max leased {}\n  dead letters to {}\n  ready {}  delayed {}  leased {}  acked {}  dead-lettered {}  redelivered {}  blocked keys {}\n",
        q.topic,
        q.queue,
        c.lease_ms,
        c.max_deliveries,
        c.retry_backoff_min_ms,
        c.retry_backoff_max_ms,
        if c.ordering == QueueOrdering::Key as i32 {
            "key"
        } else {
            "none"
        },
        c.max_leased,
        c.dead_letter_topic,
        q.ready,
        q.delayed,
        q.leased,
        q.acked_total,
        q.dead_lettered_total,
        q.redelivered_total,
        q.blocked_keys,
    );
    if !q.paused.is_empty() {
        out.push_str(&format!("  PAUSED: {}\n", q.paused));
    }
    if q.redrive_remaining > 0 || q.redriven_total > 0 {
        out.push_str(&format!(
            "  redriven {}  redrive: {} dead letters to look at\n",
            q.redriven_total, q.redrive_remaining
        ));
    }
    let mut t = Table::new(&[
        ("PARTITION", true),
        ("ACK FLOOR", true),
        ("END", true),
        ("LEASED", true),
    ]);
    for p in &q.partitions {
        t.row(vec![
            p.partition.to_string(),
            p.ack_floor.to_string(),
            p.end_offset.to_string(),
            p.leased.to_string(),
        ]);
    }
    out.push_str(&t.render());
    for w in &q.consumers {
        out.push_str(&format!("  worker {:?}: {} leased\n", w.consumer, w.leased));
    }
    out
}

async fn receive(client: &Client, a: ReceiveArgs) -> anyhow::Result<()> {
    let deliveries = client
        .receive(ReceiveRequest {
            topic: a.topic.clone(),
            queue: a.queue.clone(),
            max_records: a.count,
            wait_ms: a.wait.as_millis().min(30_000) as u32,
            lease_ms: 0,
            consumer: "spool-cli".into(),
        })
        .await
        .with_context(|| format!("cannot receive from {}/{}", a.topic, a.queue))?;
    let mut settlements = Vec::new();
    for d in &deliveries {
        let r = d.record.clone().unwrap_or_default();
        if a.json {
            let m = Message {
                partition: d.partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
            };
            let line = output::json_line(&m);
            println!(
                "{},\"attempt\":{},\"lease_id\":\"{}\"}}",
                &line[..line.len() - 1],
                d.attempt,
                d.lease_id
            );
        } else {
            println!("{}", String::from_utf8_lossy(&r.value));
        }
        settlements.push(Settlement {
            partition: d.partition,
            offset: r.offset,
            lease_id: d.lease_id,
            action: SettleAction::Ack as i32,
            delay_ms: None,
            reason: String::new(),
        });
    }
    if a.no_ack || settlements.is_empty() {
        return Ok(());
    }
    let outcomes = client
        .settle(SettleRequest {
            topic: a.topic,
            queue: a.queue,
            settlements,
        })
        .await?;
    let missed = outcomes
        .iter()
        .filter(|o| o.result != SettleResult::Ok as i32)
        .count();
    if missed > 0 {
        anyhow::bail!(
            "{missed} of {} acks did not count: their leases had ended",
            outcomes.len()
        );
    }
    Ok(())
}

async fn work(client: &Client, a: WorkArgs) -> anyhow::Result<()> {
    let concurrency = a.concurrency.max(1);
    let options = QueueOptions {
        consumer: a.consumer.clone(),
        max_outstanding: concurrency,
        ..QueueOptions::default()
    };
    let mut jobs = QueueConsumer::new(client, &a.topic, &a.queue, options)
        .await
        .with_context(|| format!("cannot work on {}/{}", a.topic, a.queue))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency as usize));
    let mut running = tokio::task::JoinSet::new();
    let mut settled = 0u64;
    let exec = Arc::new(a.exec.clone());
    while a.count.is_none_or(|n| settled + (running.len() as u64) < n) {
        tokio::select! {
            job = jobs.next() => {
                let Some(job) = job else { break };
                let job = job?;
                let permit = Arc::clone(&slots).acquire_owned().await?;
                let (exec, topic, queue) = (Arc::clone(&exec), a.topic.clone(), a.queue.clone());
                running.spawn(async move {
                    let _permit = permit;
                    let ok = run_command(&exec, &topic, &queue, &job).await;
                    let result = match ok {
                        Ok(true) => job.ack().await,
                        Ok(false) => job.nack(None).await,
                        Err(e) => {
                            eprintln!("spool: cannot run {exec:?}: {e}");
                            job.nack(None).await
                        }
                    };
                    result.map(|_| ())
                });
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                done??;
                settled += 1;
            }
        }
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

/// Runs `exec` for `job`: true if it exited 0.
async fn run_command(
    exec: &str,
    topic: &str,
    queue: &str,
    job: &spool_client::Job,
) -> std::io::Result<bool> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(exec)
        .env("SPOOL_TOPIC", topic)
        .env("SPOOL_QUEUE", queue)
        .env("SPOOL_PARTITION", job.partition.to_string())
        .env("SPOOL_OFFSET", job.offset.to_string())
        .env("SPOOL_ATTEMPT", job.attempt.to_string())
        .env("SPOOL_KEY", std::str::from_utf8(&job.key).unwrap_or(""))
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine: ignore a broken pipe.
        let _ = stdin.write_all(&job.value).await;
    }
    Ok(child.wait().await?.success())
}
