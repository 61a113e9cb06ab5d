//! Test harness: runs the real `spoold` binary on an ephemeral port with a temporary data
//! directory, and small helpers the end-to-end tests share.
//!
//! [`Broker::start`] spawns the built binary with `--listen 127.0.0.1:0 --metrics-listen
//! 127.0.0.1:0`, reads its log on stderr up to the `serving` line and parses the addresses
//! from it. A thread keeps draining stderr afterwards (so the pipe never fills and blocks
//! the broker) and keeps the lines for failure messages. The data directory outlives
//! restarts: [`Broker::restart`] and the crash tests reopen the same one.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod cluster;

use std::future::Future;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_proto::v1::broker_client::BrokerClient;
use spool_proto::v1::*;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The gRPC client type the tests use.
pub type Client = BrokerClient<Channel>;

/// How long any single wait may take before the test fails. Generous on purpose: a loaded
/// 2-core machine running debug builds can be slow, and no test asserts on timing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running (or stopped) `spoold` process and its data directory.
pub struct Broker {
    child: Option<Child>,
    dir: Arc<TempDir>,
    args: Vec<String>,
    /// The gRPC address of the current process.
    pub addr: SocketAddr,
    /// The metrics address (`host:port`) of the current process.
    pub metrics_addr: SocketAddr,
    /// Every stderr line of every process run on this data directory, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

/// Flags for a broker that compacts (and rolls aged segments) within a fraction of a second.
pub const QUICK_COMPACTION: [&str; 8] = [
    "--compaction-check-ms",
    "100",
    "--retention-check-ms",
    "100",
    "--compaction-bytes-per-sec",
    "0",
    "--compaction-max-lag-ms",
    "500",
];

impl Broker {
    /// Starts a broker with the default flags on a fresh data directory.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Starts a broker with extra flags (for example `["--fsync", "never"]`).
    pub fn start_with(args: &[&str]) -> Broker {
        let dir = Arc::new(TempDir::with_prefix("spool-e2e-").expect("temporary directory"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, addr, metrics_addr) = spawn(dir.path(), args, &log);
        Broker {
            child: Some(child),
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            addr,
            metrics_addr,
            log,
        }
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's stderr so far, for assertion messages.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// A new connection to the broker.
    pub async fn client(&self) -> Client {
        let endpoint = format!("http://{}", self.addr);
        let connect = BrokerClient::connect(endpoint);
        match tokio::time::timeout(PATIENCE, connect).await {
            Ok(Ok(c)) => c.max_decoding_message_size(64 << 20),
            Ok(Err(e)) => panic!("connecting to {}: {e}\n{}", self.addr, self.log()),
            Err(_) => panic!("connecting to {} timed out\n{}", self.addr, self.log()),
        }
    }

    /// The process id of the running broker.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker is running").id()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("broker is running");
        signal(child.id(), rustix::process::Signal::TERM);
        let status = wait(child).await;
        self.child = None;
        status
    }

    /// Stops the broker gracefully (SIGTERM) and asserts it exited with status 0.
    pub async fn stop(&mut self) {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "spoold exited with {status} after SIGTERM\n{}",
            self.log()
        );
    }

    /// Kills the broker with SIGKILL (no chance to flush) and reaps it.
    pub async fn kill(&mut self) {
        let child = self.child.as_mut().expect("broker is running");
        signal(child.id(), rustix::process::Signal::KILL);
        wait(child).await;
        self.child = None;
    }

    /// Starts the broker again on the same data directory with the same flags. The new
    /// process listens on new ports: reconnect with [`Broker::client`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (child, addr, metrics_addr) = spawn(self.dir.path(), &args, &self.log);
        self.child = Some(child);
        self.addr = addr;
        self.metrics_addr = metrics_addr;
    }

    /// `GET /metrics` over plain HTTP/1.0 (so the body is never chunked); returns the body.
    /// Blocking, briefly: the broker is another process, so the test's runtime may stall.
    pub fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.metrics_addr).expect("connect to /metrics");
        s.set_read_timeout(Some(PATIENCE)).expect("read timeout");
        write!(
            s,
            "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.metrics_addr
        )
        .expect("send the request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("read the response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP header end in {response:?}"));
        assert!(head.contains(" 200 "), "{head}");
        body.to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a positive pid");
    rustix::process::kill_process(pid, sig).expect("signal spoold");
}

/// Waits for the process to exit without blocking the async runtime.
async fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait for spoold") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "spoold did not exit within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Spawns `spoold`, waits for its `serving` line and returns the gRPC and metrics addresses.
fn spawn(
    data_dir: &Path,
    args: &[&str],
    log: &Arc<Mutex<Vec<String>>>,
) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spoold"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(args)
        .env("SPOOL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoold");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let lines = Arc::clone(log);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("serving")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(line.clone());
            }
            lines.lock().expect("log lock").push(line);
        }
        // Dropping `tx` here tells the starter that the process ended before serving.
    });
    let line = match rx.recv_timeout(PATIENCE) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "spoold never logged `serving` ({e}; exit {status:?})\n{}",
                log.lock().expect("log lock").join("\n")
            );
        }
    };
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .to_string()
    };
    let grpc: SocketAddr = field("grpc=").parse().expect("grpc address");
    let metrics = field("metrics=");
    let metrics: SocketAddr = metrics
        .strip_prefix("http://")
        .and_then(|m| m.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("metrics address {metrics:?}"))
        .parse()
        .expect("metrics address");
    (child, grpc, metrics)
}

/// Awaits `fut`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {PATIENCE:?}"),
    }
}

/// The status code of a failed call; panics on success.
pub fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    status(r).code()
}

/// The status of a failed call; panics on success.
pub fn status<T: std::fmt::Debug>(r: Result<T, Status>) -> Status {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s,
    }
}

/// A record with only a value.
pub fn rec(value: impl Into<Bytes>) -> Record {
    Record {
        value: value.into(),
        ..Record::default()
    }
}

/// A record with a value and an explicit timestamp.
pub fn rec_at(value: impl Into<Bytes>, timestamp_ms: i64) -> Record {
    Record {
        value: value.into(),
        timestamp_ms,
        ..Record::default()
    }
}

/// Records whose values are `"{prefix}-{i}"` for `i` in `range`.
pub fn recs(prefix: &str, range: std::ops::Range<u32>) -> Vec<Record> {
    range.map(|i| rec(format!("{prefix}-{i}"))).collect()
}

/// A record's value, as a string.
pub fn value(r: &Record) -> String {
    String::from_utf8_lossy(&r.value).into_owned()
}

/// Values of records, as strings.
pub fn values(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

/// Creates a topic with default config except the fsync policy.
pub async fn create_topic(
    c: &mut Client,
    name: &str,
    partitions: u32,
    fsync: FsyncPolicy,
) -> TopicInfo {
    let config = TopicConfig {
        fsync: fsync as i32,
        ..TopicConfig::default()
    };
    create_topic_with(c, name, partitions, config).await
}

/// Creates a topic with `config`.
pub async fn create_topic_with(
    c: &mut Client,
    name: &str,
    partitions: u32,
    config: TopicConfig,
) -> TopicInfo {
    let req = CreateTopicRequest {
        name: name.into(),
        partitions,
        config: Some(config),
        ..Default::default()
    };
    within("CreateTopic", c.create_topic(req))
        .await
        .unwrap_or_else(|s| panic!("CreateTopic {name}: {s}"))
        .into_inner()
        .topic
        .expect("topic info")
}

/// `AlterTopic`: the call's result, for tests of its errors too.
pub async fn try_alter(
    c: &mut Client,
    name: &str,
    partitions: u32,
    config: TopicConfig,
    reset: &[&str],
) -> Result<TopicInfo, Status> {
    let req = AlterTopicRequest {
        name: name.into(),
        partitions,
        config: Some(config),
        reset: reset.iter().map(|s| s.to_string()).collect(),
    };
    within("AlterTopic", c.alter_topic(req))
        .await
        .map(|r| r.into_inner().topic.expect("topic info"))
}

/// `AlterTopic` that must succeed.
pub async fn alter(c: &mut Client, name: &str, partitions: u32, config: TopicConfig) -> TopicInfo {
    try_alter(c, name, partitions, config, &[])
        .await
        .unwrap_or_else(|s| panic!("AlterTopic {name}: {s}"))
}

/// Appends `records` to an explicit partition; returns the response.
pub async fn append(
    c: &mut Client,
    topic: &str,
    partition: u32,
    records: Vec<Record>,
) -> AppendResponse {
    let req = AppendRequest {
        topic: topic.into(),
        partition: Some(partition),
        records,
        ..AppendRequest::default()
    };
    within("Append", c.append(req))
        .await
        .unwrap_or_else(|s| panic!("Append to {topic}/{partition}: {s}"))
        .into_inner()
}

/// `ListGroups` of `topic` (every topic if empty).
pub async fn list_groups(c: &mut Client, topic: &str) -> Vec<GroupSummary> {
    let req = ListGroupsRequest {
        topic: topic.into(),
    };
    within("ListGroups", c.list_groups(req))
        .await
        .unwrap_or_else(|s| panic!("ListGroups {topic:?}: {s}"))
        .into_inner()
        .groups
}

/// One Read call.
pub async fn read(
    c: &mut Client,
    topic: &str,
    partition: u32,
    offset: u64,
    max_records: u32,
) -> Result<ReadResponse, Status> {
    let req = ReadRequest {
        topic: topic.into(),
        partition,
        offset,
        max_records,
        ..ReadRequest::default()
    };
    within("Read", c.read(req)).await.map(|r| r.into_inner())
}

/// Reads a whole partition from `from` to its end offset, in as many calls as it takes.
pub async fn read_to_end(c: &mut Client, topic: &str, partition: u32, from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = read(c, topic, partition, next, 0)
            .await
            .unwrap_or_else(|s| panic!("Read {topic}/{partition}@{next}: {s}"));
        match r.records.last() {
            Some(last) => next = last.offset + 1,
            None => return out,
        }
        out.extend(r.records);
        if next >= r.end_offset {
            return out;
        }
    }
}

/// Describes a topic.
pub async fn describe(c: &mut Client, name: &str) -> TopicInfo {
    within(
        "DescribeTopic",
        c.describe_topic(DescribeTopicRequest { name: name.into() }),
    )
    .await
    .unwrap_or_else(|s| panic!("DescribeTopic {name}: {s}"))
    .into_inner()
    .topic
    .expect("topic info")
}

/// Commits a group's offset.
pub async fn commit(c: &mut Client, group: &str, topic: &str, partition: u32, offset: u64) {
    let req = CommitOffsetRequest {
        group: group.into(),
        topic: topic.into(),
        partition,
        offset,
        metadata: String::new(),
    };
    within("CommitOffset", c.commit_offset(req))
        .await
        .unwrap_or_else(|s| panic!("CommitOffset {group} {topic}/{partition}={offset}: {s}"));
}

/// A group's offsets on a topic.
pub async fn get_offsets(c: &mut Client, group: &str, topic: &str) -> Vec<PartitionOffsets> {
    let req = GetOffsetsRequest {
        group: group.into(),
        topic: topic.into(),
    };
    within("GetOffsets", c.get_offsets(req))
        .await
        .unwrap_or_else(|s| panic!("GetOffsets {group} {topic}: {s}"))
        .into_inner()
        .partitions
}

/// Opens a Subscribe stream.
pub async fn subscribe(
    c: &mut Client,
    req: SubscribeRequest,
) -> Result<tonic::Streaming<SubscribeResponse>, Status> {
    within("Subscribe", c.subscribe(req))
        .await
        .map(|r| r.into_inner())
}

/// A start position.
pub fn start(kind: start_position::Kind) -> Option<StartPosition> {
    Some(StartPosition {
        kind: kind as i32,
        ..StartPosition::default()
    })
}

/// Receives from a Subscribe stream until `n` records arrived in total (across partitions);
/// returns them as (partition, record). Fails on an error or the end of the stream, and
/// on any gap or reordering within a partition.
pub async fn take_records(
    stream: &mut tonic::Streaming<SubscribeResponse>,
    n: usize,
) -> Vec<(u32, Record)> {
    let mut out: Vec<(u32, Record)> = Vec::new();
    while out.len() < n {
        let msg = within("Subscribe message", stream.message())
            .await
            .unwrap_or_else(|s| panic!("Subscribe stream failed after {} records: {s}", out.len()))
            .unwrap_or_else(|| panic!("Subscribe stream ended after {} records", out.len()));
        assert!(!msg.records.is_empty(), "an empty SubscribeResponse");
        for r in msg.records {
            if let Some((_, prev)) = out.iter().rev().find(|(p, _)| *p == msg.partition) {
                assert_eq!(
                    r.offset,
                    prev.offset + 1,
                    "partition {} skipped or repeated an offset",
                    msg.partition
                );
            }
            out.push((msg.partition, r));
        }
    }
    assert_eq!(out.len(), n, "more records than expected arrived");
    out
}

/// A config file with `tokens` (principal, token) and ACL `rules` (principal, resource,
/// quoted operations); its path.
pub fn auth_config(
    dir: &std::path::Path,
    tokens: &[(&str, &str)],
    rules: &[(&str, &str, &str)],
) -> std::path::PathBuf {
    use sha2::Digest;
    let hex = |t: &str| -> String {
        sha2::Sha256::digest(t.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let tokens: Vec<String> = tokens
        .iter()
        .map(|(p, t)| format!("{{ principal = \"{p}\", sha256 = \"{}\" }}", hex(t)))
        .collect();
    let rules: Vec<String> = rules
        .iter()
        .map(|(p, r, ops)| {
            format!("{{ principal = \"{p}\", resource = \"{r}\", operations = [{ops}] }}")
        })
        .collect();
    let path = dir.join("spool.toml");
    let text = format!(
        "[auth]\ntokens = [{}]\nacl = [{}]\n",
        tokens.join(", "),
        rules.join(", ")
    );
    std::fs::write(&path, text).unwrap();
    path
}
