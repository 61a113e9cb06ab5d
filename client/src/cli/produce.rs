//! `spool produce`: one record per line of stdin or a file, through the batching,
//! idempotent [`Producer`]. Every record's acknowledgement is awaited before exit.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use spool_client::v1::Header;
use spool_client::{Client, Producer, ProducerOptions, ProducerRecord};
use tokio::sync::mpsc;

use super::output;
use super::progress::Progress;

/// Lines handed from the reading thread to the producer at a time.
const CHUNK_LINES: usize = 1024;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  seq 1 100000 | spool produce numbers
  spool produce orders --file orders.jsonl --key customer-7 --header source=import
  echo reminder | spool produce jobs --delay 30m

Each line (without its line ending) becomes one record's value; empty lines become empty
records. Records are batched and sent idempotently: a retry after a dropped connection
never writes a record twice. The command exits once every record is acknowledged, with
status 1 if any was not.")]
pub struct ProduceArgs {
    /// The topic to append to.
    topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, short, value_name = "PATH")]
    file: Option<PathBuf>,
    /// The key of every record; records with a key go to the partition its hash chooses.
    #[arg(long, short)]
    key: Option<String>,
    /// A header added to every record, as NAME=VALUE (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Send every record to this partition (overrides the key's choice).
    #[arg(long, short)]
    partition: Option<u32>,
    /// Queues deliver each record no earlier than this long after it is sent (e.g. 30s, 2h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "deliver_at")]
    delay: Option<Duration>,
    /// Queues deliver the records no earlier than this time (RFC 3339, e.g.
    /// 2026-12-24T18:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
    deliver_at: Option<std::time::SystemTime>,
    /// How long records may wait for an unreachable broker before they count as failed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    delivery_timeout: Duration,
    /// No summary line at the end, no progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

pub async fn run(client: &Client, args: ProduceArgs) -> anyhow::Result<()> {
    let input: Box<dyn Read + Send> = match &args.file {
        Some(path) => Box::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    let options = ProducerOptions {
        delivery_timeout: args.delivery_timeout,
        ..ProducerOptions::default()
    };
    let producer = Producer::new(client, &args.topic, options).await?;
    let key = args.key.clone().map(Bytes::from).unwrap_or_default();
    let headers: Vec<Header> = args
        .headers
        .iter()
        .map(|(k, v)| Header {
            key: k.clone(),
            value: Bytes::from(v.clone()),
        })
        .collect();

    // Reading is blocking I/O: a thread reads lines and hands them over in chunks.
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<Bytes>>>(8);
    let reader = std::thread::spawn(move || read_lines(input, tx));

    let started = Instant::now();
    let progress = Progress::new(
        !args.quiet && std::io::stderr().is_terminal(),
        "records sent",
    );
    let mut pending = FuturesUnordered::new();
    let (mut sent, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error: Option<spool_client::Error> = None;
    let mut on_ack = |r: spool_client::Result<spool_client::Delivery>| match r {
        Ok(_) => acked += 1,
        Err(e) => {
            failed += 1;
            first_error.get_or_insert(e);
        }
    };
    let mut input_done = false;
    while !input_done || !pending.is_empty() {
        tokio::select! {
            chunk = rx.recv(), if !input_done => match chunk {
                None => input_done = true,
                Some(Err(e)) => {
                    // Whatever was read so far is still delivered before we report this.
                    drain(&mut pending, &mut on_ack).await;
                    return Err(anyhow::Error::new(e).context("cannot read the input"));
                }
                Some(Ok(lines)) => {
                    for value in lines {
                        let mut record = ProducerRecord::new(value).key(key.clone());
                        record.headers = headers.clone();
                        record.partition = args.partition;
                        let at = args
                            .deliver_at
                            .or_else(|| args.delay.map(|d| std::time::SystemTime::now() + d));
                        if let Some(at) = at {
                            record = record.deliver_at(at);
                        }
                        pending.push(producer.enqueue(record).await?);
                        sent += 1;
                    }
                    progress.update(sent);
                }
            },
            Some(r) = pending.next(), if !pending.is_empty() => on_ack(r),
        }
    }
    producer.close().await?;
    progress.finish();
    // The thread has sent everything; a panic there would be a bug worth surfacing.
    if reader.join().is_err() {
        anyhow::bail!("the input reading thread panicked");
    }
    let elapsed = started.elapsed();
    if let Some(e) = first_error {
        return Err(anyhow::Error::new(e).context(format!(
            "{} of {} records were not acknowledged ({} were)",
            output::count(failed),
            output::count(sent),
            output::count(acked)
        )));
    }
    if !args.quiet {
        eprintln!(
            "produced {} records to {} in {} ({})",
            output::count(acked),
            args.topic,
            humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64)),
            output::rate(acked, elapsed)
        );
    }
    Ok(())
}

async fn drain<F>(pending: &mut FuturesUnordered<spool_client::PendingDelivery>, on_ack: &mut F)
where
    F: FnMut(spool_client::Result<spool_client::Delivery>),
{
    while let Some(r) = pending.next().await {
        on_ack(r);
    }
}

/// Reads lines (without `\n` or `\r\n`) and sends them in chunks until EOF or an error.
fn read_lines(input: Box<dyn Read + Send>, tx: mpsc::Sender<std::io::Result<Vec<Bytes>>>) {
    let mut input = BufReader::with_capacity(1 << 16, input);
    let mut chunk = Vec::with_capacity(CHUNK_LINES);
    loop {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                chunk.push(Bytes::from(line));
                if chunk.len() >= CHUNK_LINES
                    && tx
                        .blocking_send(Ok(std::mem::replace(
                            &mut chunk,
                            Vec::with_capacity(CHUNK_LINES),
                        )))
                        .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
}
