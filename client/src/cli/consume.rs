//! `spool consume`: prints records as a plain [`Reader`] or as a [`GroupConsumer`] member.
//!
//! Without `--follow` the command stops once it has caught up with the end offsets the
//! topic had when it started (described first), or after `-n` records. A group member
//! commits exactly what it printed: after each flush of stdout, the offset after the last
//! printed record of each partition, so `-n N` commits N records and a broken pipe commits
//! only what reached the pipe. While records keep coming those commits are not waited for
//! (they apply in order); at a pause and at the end every commit is waited for.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use spool_client::v1::{ReadRequest, TopicInfo};
use spool_client::{
    Client, Error, GroupConsumer, GroupOptions, Message, Reader, ReaderOptions, Start,
};

use super::output;
use super::progress::Progress;

/// Printed records between flushes (and, for a group, commits) while records keep coming.
const FLUSH_EVERY: u64 = 1000;
/// How long a member waits for more records after a pause before it commits: the broker
/// sends small batches, and a commit (a durable write) per batch would be slow.
const SETTLE: Duration = Duration::from_millis(50);
/// How often an idle member re-checks whether the group has caught up.
const IDLE_CHECK: Duration = Duration::from_millis(200);
/// Commit attempts on a retriable failure (the member reconnects meanwhile).
const COMMIT_ATTEMPTS: u32 = 6;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  spool consume events -n 10                      # the first ten records
  spool consume events --from latest --follow     # tail new records
  spool consume events --from time:2024-05-01T12:00:00Z --output json
  spool consume events --partition 2 --from offset:1500
  spool consume events --group billing            # resume where the group left off

Without --follow the command stops once it has caught up with the end offsets the
topic had when it started (or after -n records). With --group it joins the group,
reads the partitions the broker assigns from the group's committed offsets, and
commits what it printed.

--output json writes one object per line:
  {\"partition\":0,\"offset\":5,\"timestamp_ms\":1714564800000,\"key\":\"k\",
   \"value\":\"v\",\"headers\":[{\"key\":\"source\",\"value\":\"import\"}]}
key, value and header values are strings when they are valid UTF-8; otherwise they
are base64 (standard alphabet, padded) and the object carries \"key_base64\": true,
\"value_base64\": true (or, in a header, \"value_base64\": true).")]
pub struct ConsumeArgs {
    /// The topic to read.
    topic: String,
    /// Consume as a member of this consumer group (partitions assigned by the broker,
    /// starting from the group's committed offsets); without it, a plain reader.
    #[arg(long, short, conflicts_with_all = ["from", "partitions"])]
    group: Option<String>,
    /// Where a plain reader starts: earliest, latest, offset:N (in every chosen partition)
    /// or time:RFC3339 (e.g. time:2024-05-01T12:00:00Z).
    #[arg(long, default_value = "earliest", value_name = "POSITION")]
    from: From,
    /// Read only this partition (repeatable); plain reader only.
    #[arg(long = "partition", short, value_name = "P")]
    partitions: Vec<u32>,
    /// Stop after this many records.
    #[arg(short = 'n', long = "max-records", value_name = "N")]
    max_records: Option<u64>,
    /// Keep waiting for new records instead of stopping once caught up.
    #[arg(long, short)]
    follow: bool,
    /// value: each value as text (invalid UTF-8 replaced), one per line; json: JSON lines.
    #[arg(long, short, value_enum, default_value = "value")]
    output: Output,
    /// With --group: how long the broker keeps this member's partitions after it
    /// disconnects. Short by default so the next `spool consume --group` run soon gets
    /// the partitions of one that exited.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Value,
    Json,
}

/// A plain reader's start position, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum From {
    Earliest,
    Latest,
    Offset(u64),
    Time(i64),
}

impl FromStr for From {
    type Err = String;

    fn from_str(s: &str) -> Result<From, String> {
        if s == "earliest" {
            return Ok(From::Earliest);
        }
        if s == "latest" {
            return Ok(From::Latest);
        }
        if let Some(n) = s.strip_prefix("offset:") {
            return n
                .parse()
                .map(From::Offset)
                .map_err(|_| format!("offset:N needs a non-negative integer, got {n:?}"));
        }
        if let Some(t) = s.strip_prefix("time:") {
            let at = humantime::parse_rfc3339_weak(t).map_err(|e| {
                format!("time:T needs an RFC 3339 UTC time like 2024-05-01T12:00:00Z ({e})")
            })?;
            let ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("{t} is before 1970"))?
                .as_millis();
            return Ok(From::Time(ms as i64));
        }
        Err(format!(
            "expected earliest, latest, offset:N or time:RFC3339, got {s:?}"
        ))
    }
}

pub async fn run(client: &Client, args: ConsumeArgs) -> anyhow::Result<()> {
    let info = client.describe_topic(&args.topic).await?;
    let mut printer = Printer::new(args.output);
    let result = match &args.group {
        Some(group) => consume_group(client, &args, &info, group, &mut printer).await,
        None => consume_plain(client, &args, &info, &mut printer).await,
    };
    printer.progress.finish();
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Buffered stdout; records what each partition's printed position is.
struct Printer {
    out: std::io::BufWriter<std::io::Stdout>,
    format: Output,
    printed: u64,
    unflushed: u64,
    /// Per partition, the offset after the last record written to the buffer...
    written: BTreeMap<u32, u64>,
    /// ...and after the last one flushed to stdout.
    flushed: BTreeMap<u32, u64>,
    /// Shown on a terminal's stderr while the records go elsewhere (`> file`, `| cmd`).
    progress: Progress,
}

impl Printer {
    fn new(format: Output) -> Printer {
        Printer {
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()),
            format,
            printed: 0,
            unflushed: 0,
            written: BTreeMap::new(),
            flushed: BTreeMap::new(),
            progress: Progress::new(
                std::io::stderr().is_terminal() && !std::io::stdout().is_terminal(),
                "records read",
            ),
        }
    }

    fn print(&mut self, m: &Message) -> std::io::Result<()> {
        match self.format {
            Output::Value => {
                self.out.write_all(&m.value)?;
                self.out.write_all(b"\n")?;
            }
            Output::Json => {
                self.out.write_all(output::json_line(m).as_bytes())?;
                self.out.write_all(b"\n")?;
            }
        }
        self.written.insert(m.partition, m.offset + 1);
        self.printed += 1;
        self.unflushed += 1;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.unflushed > 0 {
            self.out.flush()?;
            self.flushed.clone_from(&self.written);
            self.unflushed = 0;
            self.progress.update(self.printed);
        }
        Ok(())
    }
}

/// Whether `-n` is reached.
fn limit_reached(args: &ConsumeArgs, p: &Printer) -> bool {
    args.max_records.is_some_and(|n| p.printed >= n)
}

async fn consume_plain(
    client: &Client,
    args: &ConsumeArgs,
    info: &TopicInfo,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let chosen: Vec<u32> = if args.partitions.is_empty() {
        (0..info.partitions).collect()
    } else {
        let mut ps = args.partitions.clone();
        ps.sort_unstable();
        ps.dedup();
        ps
    };
    // The partitions still behind the end offsets seen at start.
    let mut behind = BTreeMap::new();
    for &p in &chosen {
        let pi = info
            .partition_info
            .iter()
            .find(|i| i.partition == p)
            .with_context(|| {
                format!(
                    "partition {p} does not exist: topic {} has partitions 0..{}",
                    info.name, info.partitions
                )
            })?;
        let (start, end) = (pi.start_offset, pi.end_offset);
        let caught_up = match args.from {
            From::Earliest => start >= end,
            From::Latest => true,
            From::Offset(n) => n >= end,
            From::Time(t) => start >= end || last_timestamp(client, info, p, end).await? < t,
        };
        if !caught_up {
            behind.insert(p, end);
        }
    }
    if args.max_records == Some(0) || (!args.follow && behind.is_empty()) {
        return Ok(());
    }
    let options = ReaderOptions {
        start: match args.from {
            From::Earliest => Start::Earliest,
            From::Latest => Start::Latest,
            From::Offset(n) => Start::Offset(n),
            From::Time(t) => Start::Timestamp(t),
        },
        partitions: Some(chosen),
        ..ReaderOptions::default()
    };
    let mut reader = Reader::new(client, &args.topic, options).await?;
    loop {
        if limit_reached(args, printer) || (!args.follow && behind.is_empty()) {
            break;
        }
        let item = match reader.next().now_or_never() {
            Some(item) => item,
            None => {
                printer.flush()?;
                reader.next().await
            }
        };
        let Some(item) = item else { break };
        let m = item?;
        printer.print(&m)?;
        if behind
            .get(&m.partition)
            .is_some_and(|&end| m.offset + 1 >= end)
        {
            behind.remove(&m.partition);
        }
        if printer.unflushed >= FLUSH_EVERY {
            printer.flush()?;
        }
    }
    printer.flush()?;
    Ok(())
}

/// The timestamp of a partition's last record, for deciding whether `time:T` has anything
/// to deliver there.
async fn last_timestamp(
    client: &Client,
    info: &TopicInfo,
    partition: u32,
    end: u64,
) -> anyhow::Result<i64> {
    let resp = client
        .read(ReadRequest {
            topic: info.name.clone(),
            partition,
            offset: end - 1,
            max_records: 1,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await?;
    Ok(resp.records.last().map_or(i64::MIN, |r| r.timestamp_ms))
}

async fn consume_group(
    client: &Client,
    args: &ConsumeArgs,
    info: &TopicInfo,
    group: &str,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    let ends: BTreeMap<u32, u64> = info
        .partition_info
        .iter()
        .map(|p| (p.partition, p.end_offset))
        .collect();
    let options = GroupOptions {
        session_timeout: args.session_timeout,
        ..GroupOptions::default()
    };
    let mut member = GroupMember {
        client,
        group,
        topic: &args.topic,
        ends,
        consumer: GroupConsumer::new(client, group, &args.topic, options).await?,
        committed: BTreeMap::new(),
        last_check: None,
        owned_nothing: false,
        sending: FuturesUnordered::new(),
    };
    let result = member.run(args, printer).await;
    // Commit what reached stdout, also when printing failed (e.g. a closed pipe).
    let flushed = printer.flush();
    member.commit(printer).await?;
    result?;
    flushed?;
    if member.owned_nothing && printer.printed == 0 {
        eprintln!(
            "spool: note: the broker assigned this member no partitions of {}: the group's \
             other connected members hold them all",
            args.topic
        );
    }
    Ok(())
}

struct GroupMember<'a> {
    client: &'a Client,
    group: &'a str,
    topic: &'a str,
    /// End offsets when the command started.
    ends: BTreeMap<u32, u64>,
    consumer: GroupConsumer,
    /// What this run committed, per partition.
    committed: BTreeMap<u32, u64>,
    last_check: Option<Instant>,
    /// Set when the caught-up check found this member owning nothing.
    owned_nothing: bool,
    /// Commits sent and not yet answered: (partition, offset, outcome).
    sending: FuturesUnordered<BoxFuture<'static, (u32, u64, spool_client::Result<()>)>>,
}

impl GroupMember<'_> {
    async fn run(&mut self, args: &ConsumeArgs, printer: &mut Printer) -> anyhow::Result<()> {
        if args.max_records == Some(0) {
            return Ok(());
        }
        loop {
            if limit_reached(args, printer) {
                return Ok(());
            }
            let item = match self.consumer.next().now_or_never() {
                Some(item) => item,
                None => {
                    // A pause: show what was printed at once and commit it without waiting
                    // (the broker's credit for this member refills as commits land); if
                    // nothing follows soon, wait for the commits and see whether the group
                    // has caught up.
                    printer.flush()?;
                    self.commit_in_background(printer);
                    self.reap(false).await?;
                    match tokio::time::timeout(SETTLE, self.consumer.next()).await {
                        Ok(item) => item,
                        Err(_) => {
                            self.commit(printer).await?;
                            match self.wait(args, printer).await? {
                                Some(item) => item,
                                None => return Ok(()),
                            }
                        }
                    }
                }
            };
            let Some(item) = item else { return Ok(()) };
            let m = item?;
            printer.print(&m)?;
            let reached_end = self.ends.get(&m.partition) == Some(&(m.offset + 1));
            if printer.unflushed >= FLUSH_EVERY {
                printer.flush()?;
                self.commit_in_background(printer);
                self.reap(false).await?;
            }
            if !args.follow && (reached_end || self.check_due()) && self.caught_up(printer).await? {
                return Ok(());
            }
        }
    }

    /// Waits for the next record; without `--follow`, checks now and then whether the
    /// group has caught up. `None`: caught up.
    async fn wait(
        &mut self,
        args: &ConsumeArgs,
        printer: &Printer,
    ) -> anyhow::Result<Option<Option<spool_client::Result<Message>>>> {
        if args.follow {
            return Ok(Some(self.consumer.next().await));
        }
        loop {
            if self.caught_up(printer).await? {
                return Ok(None);
            }
            // The consumer offers no notification of a new assignment, so an idle
            // member polls the group's state at this pace.
            if let Ok(item) = tokio::time::timeout(IDLE_CHECK, self.consumer.next()).await {
                return Ok(Some(item));
            }
        }
    }

    fn check_due(&self) -> bool {
        self.last_check
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
    }

    /// Caught up: the broker has given this member its assignment, no disconnected member
    /// still holds partitions (they come to the live members when its session times out),
    /// and in each partition this member owns, what it printed or the group committed
    /// reaches the end offset seen at start.
    async fn caught_up(&mut self, printer: &Printer) -> anyhow::Result<bool> {
        self.last_check = Some(Instant::now());
        let state = self.consumer.state();
        if state.generation == 0 {
            return Ok(false);
        }
        let described = self
            .client
            .describe_group(self.group, Some(self.topic))
            .await?;
        let Some(gt) = described.topics.iter().find(|t| t.topic == self.topic) else {
            return Ok(false);
        };
        if gt
            .members
            .iter()
            .any(|m| !m.connected && !m.partitions.is_empty())
        {
            return Ok(false);
        }
        let Some(me) = gt.members.iter().find(|m| m.member_id == state.member_id) else {
            return Ok(false);
        };
        self.owned_nothing = me.partitions.is_empty();
        for p in &me.partitions {
            let Some(po) = gt.partitions.iter().find(|po| po.partition == *p) else {
                return Ok(false);
            };
            let position = po
                .committed
                .unwrap_or(po.start_offset)
                .max(printer.written.get(p).copied().unwrap_or(0));
            if position < self.ends.get(p).copied().unwrap_or(0) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends, per partition, the offset after the last record flushed to stdout, without
    /// waiting for it: printing goes on while the commits become durable, and the broker's
    /// in-flight credit is replenished as they do.
    fn commit_in_background(&mut self, printer: &Printer) {
        for (&p, &offset) in &printer.flushed {
            if self.committed.get(&p) == Some(&offset) {
                continue;
            }
            let done = self.consumer.commit(p, offset);
            self.sending
                .push(async move { (p, offset, done.await) }.boxed());
            self.committed.insert(p, offset);
        }
    }

    /// Takes the answers of background commits: waits for all of them (`all`) or only
    /// looks at those already in. A retriable failure leaves the partition to the next
    /// waited-for commit.
    async fn reap(&mut self, all: bool) -> anyhow::Result<()> {
        loop {
            let next = if all {
                self.sending.next().await
            } else {
                match self.sending.next().now_or_never() {
                    Some(next) => next,
                    None => return Ok(()),
                }
            };
            let Some((p, offset, result)) = next else {
                return Ok(());
            };
            match result {
                Ok(()) => {}
                Err(e @ Error::CommitRejected { .. }) => eprintln!("spool: warning: {e}"),
                Err(e) if e.is_retriable() => {
                    self.committed.remove(&p);
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot commit offset {offset} of partition {p} for group {}",
                        self.group
                    )));
                }
            }
        }
    }

    /// Commits, per partition, the offset after the last record flushed to stdout, and
    /// waits until every commit made so far is durable (retrying retriable failures).
    async fn commit(&mut self, printer: &Printer) -> anyhow::Result<()> {
        self.reap(true).await?;
        for (&p, &offset) in &printer.flushed {
            if self.committed.get(&p) == Some(&offset) {
                continue;
            }
            let mut attempt = 0;
            loop {
                match self.consumer.commit(p, offset).await {
                    Ok(()) => {
                        self.committed.insert(p, offset);
                        break;
                    }
                    Err(e @ Error::CommitRejected { .. }) => {
                        // The partition moved to another member, which will deliver
                        // these records again: at least once, never lost.
                        eprintln!("spool: warning: {e}");
                        self.committed.insert(p, offset);
                        break;
                    }
                    Err(e) if e.is_retriable() && attempt + 1 < COMMIT_ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100) * (1 << attempt)).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "cannot commit offset {offset} of partition {p} for group {}",
                            self.group
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!("earliest".parse::<From>(), Ok(From::Earliest));
        assert_eq!("latest".parse::<From>(), Ok(From::Latest));
        assert_eq!("offset:42".parse::<From>(), Ok(From::Offset(42)));
        assert_eq!(
            "time:2024-05-01T12:00:00Z".parse::<From>(),
            Ok(From::Time(1_714_564_800_000))
        );
        assert!("offset:-1".parse::<From>().is_err());
        assert!("time:yesterday".parse::<From>().is_err());
        assert!("middle".parse::<From>().is_err());
    }
}
