//! Shared helpers of the library's integration tests: a broker that restarts on the same
//! address and data directory (in-process, or the real `spoold` killed with SIGKILL), a
//! loopback TCP proxy that cuts connections, and checks that read a topic back.
//!
//! Every wait has a generous deadline so a hang fails with a message instead of blocking
//! the suite; nothing asserts on timing.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use spool_broker::BrokerConfig;
use spool_broker::server::{self, Running};
use spool_client::{
    Client, Delivery, Error, Message, PendingDelivery, Producer, ProducerOptions, ProducerRecord,
    Reader, ReaderOptions, Start,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The longest any single step of a test may take before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {limit:?}"),
    }
}

/// The value of record `i`: unique, ordered, and parseable back into `i`.
pub fn value(i: usize) -> String {
    format!("record-{i:010}")
}

/// Record `i`'s value padded with `pad` bytes, for tests that need bulk.
pub fn padded_value(i: usize, pad: usize) -> String {
    let mut v = value(i);
    v.push('.');
    v.extend(std::iter::repeat_n('x', pad));
    v
}

/// The index a value made by [`value`] or [`padded_value`] encodes.
pub fn index_of(value: &[u8]) -> usize {
    let text = std::str::from_utf8(value).expect("test values are UTF-8");
    text.get(7..17)
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("not a test value: {text:?}"))
}

/// A free loopback port (bound and released: another process could take it, but on a
/// test machine that is rare enough).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// Connects, retrying while the broker is still starting.
pub async fn connect(endpoint: &str) -> Client {
    let began = Instant::now();
    loop {
        match Client::connect(endpoint).await {
            Ok(c) => return c,
            Err(e) if e.is_retriable() && began.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connecting to {endpoint}: {e}"),
        }
    }
}

/// An in-process broker that can be stopped and started again on the same address and
/// data directory, as a broker restart looks to a client.
pub struct RestartableBroker {
    config: BrokerConfig,
    running: Option<Running>,
    dir: tempfile::TempDir,
}

impl RestartableBroker {
    pub async fn start() -> RestartableBroker {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let mut config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("valid address"),
            metrics_listen: "127.0.0.1:0".parse().expect("valid address"),
            ..BrokerConfig::default()
        };
        let running = server::start(config.clone())
            .await
            .expect("starting the broker");
        // Restarts must come back on the same port, so clients find the broker again.
        config.listen = running.grpc_addr;
        RestartableBroker {
            config,
            running: Some(running),
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.config.listen)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Shuts down gracefully (streams end with UNAVAILABLE, logs are flushed and closed).
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            within(DEADLINE, "graceful broker shutdown", r.shutdown())
                .await
                .expect("shutting the broker down");
        }
    }

    /// Starts again on the same address and data directory, retrying while the port or
    /// the data directory's lock is still held by the previous instance.
    pub async fn start_again(&mut self) {
        assert!(self.running.is_none(), "the broker is already running");
        let began = Instant::now();
        loop {
            match server::start(self.config.clone()).await {
                Ok(r) => {
                    assert_eq!(r.grpc_addr, self.config.listen);
                    self.running = Some(r);
                    return;
                }
                Err(e) if began.elapsed() < DEADLINE => {
                    eprintln!("restarting the broker: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restarting the broker on {}: {e}", self.config.listen),
            }
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }
}

/// The real `spoold` binary, started as a child process so it can be killed with SIGKILL.
pub struct Spoold {
    path: PathBuf,
    data_dir: tempfile::TempDir,
    /// Each start's stderr, kept apart from the data directory.
    logs: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: usize,
}

impl Spoold {
    /// Starts `spoold` on a free port and a fresh data directory.
    pub async fn start(path: PathBuf) -> Spoold {
        let mut s = Spoold {
            path,
            data_dir: tempfile::tempdir().expect("creating a temporary directory"),
            logs: tempfile::tempdir().expect("creating a temporary directory"),
            port: free_port(),
            child: None,
            starts: 0,
        };
        s.start_again().await;
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.logs.path().join(format!("spoold-{}.log", self.starts))
    }

    /// Starts the process on the same port and data directory and waits until it serves.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "spoold is already running");
        let began = Instant::now();
        loop {
            self.starts += 1;
            let log = std::fs::File::create(self.log_path()).expect("creating the log file");
            let mut child = Command::new(&self.path)
                .arg("--data-dir")
                .arg(self.data_dir.path())
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--metrics-listen")
                .arg("127.0.0.1:0")
                .env("SPOOL_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.path.display()));
            // Serving once a connection succeeds; exited early = port or lock still busy.
            loop {
                if let Some(status) = child.try_wait().expect("polling spoold") {
                    let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                    assert!(
                        began.elapsed() < DEADLINE,
                        "spoold exited with {status} and would not restart:\n{log}"
                    );
                    eprintln!("spoold exited with {status}; retrying:\n{log}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                if Client::connect(self.endpoint()).await.is_ok() {
                    self.child = Some(child);
                    return;
                }
                if began.elapsed() > DEADLINE {
                    let _ = child.kill();
                    panic!("spoold did not serve on {} in time", self.endpoint());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// SIGKILL: no shutdown, no flush, open files and sockets dropped by the kernel.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("killing spoold");
            child.wait().expect("reaping spoold");
        }
    }
}

impl Drop for Spoold {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP proxy in front of a broker that can cut every open connection and
/// refuse new ones for a while, as a flaky network does.
pub struct Proxy {
    addr: SocketAddr,
    accepting: Arc<AtomicBool>,
    /// Bumped to cut every connection opened before.
    epoch: watch::Sender<u64>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let accepting = Arc::new(AtomicBool::new(true));
        let (epoch, epoch_rx) = watch::channel(0u64);
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&accepting),
            epoch_rx,
            Arc::clone(&connections),
        ));
        Proxy {
            addr,
            accepting,
            epoch,
            connections,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection open now (both sides see the socket close).
    pub fn cut(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// While off, new connections are accepted and closed at once.
    pub fn set_accepting(&self, on: bool) {
        self.accepting.store(on, Ordering::SeqCst);
    }

    /// Connections accepted and forwarded so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    accepting: Arc<AtomicBool>,
    epoch: watch::Receiver<u64>,
    connections: Arc<AtomicUsize>,
) {
    loop {
        let Ok((mut downstream, _)) = listener.accept().await else {
            continue;
        };
        if !accepting.load(Ordering::SeqCst) {
            drop(downstream);
            continue;
        }
        connections.fetch_add(1, Ordering::SeqCst);
        let mut epoch = epoch.clone();
        let opened_in = *epoch.borrow_and_update();
        tokio::spawn(async move {
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = downstream.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let cut = async {
                while *epoch.borrow_and_update() == opened_in {
                    if epoch.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut downstream, &mut up) => {}
                () = cut => {}
            }
            // Dropping both sockets closes them: the client and the broker both see it.
        });
    }
}

/// Enqueues records `0..n` (values from `make`), counting progress in `enqueued`, then
/// flushes and returns every record's outcome in order.
pub async fn produce(
    producer: Arc<Producer>,
    n: usize,
    make: impl Fn(usize) -> ProducerRecord,
    enqueued: Arc<AtomicUsize>,
) -> Vec<Result<Delivery, Error>> {
    let mut pending: Vec<PendingDelivery> = Vec::with_capacity(n);
    for i in 0..n {
        let p = producer
            .enqueue(make(i))
            .await
            .unwrap_or_else(|e| panic!("enqueueing record {i}: {e}"));
        pending.push(p);
        enqueued.store(i + 1, Ordering::SeqCst);
    }
    producer.flush().await.expect("flushing the producer");
    let mut out = Vec::with_capacity(n);
    for p in pending {
        out.push(p.await);
    }
    out
}

/// Stores records `0..n` (values from `make`) on `topic` and waits until every one is
/// acknowledged.
pub async fn fill(client: &Client, topic: &str, n: usize, make: impl Fn(usize) -> String) {
    let producer = Producer::new(client, topic, ProducerOptions::default())
        .await
        .expect("starting the producer");
    for i in 0..n {
        producer
            .enqueue(ProducerRecord::new(make(i)))
            .await
            .expect("enqueueing");
    }
    producer.flush().await.expect("flushing");
}

/// Records only after `buffer_records` are acknowledged can be enqueued, so the progress
/// counter tracks the broker and disruptions land in the middle of production.
pub fn paced() -> ProducerOptions {
    ProducerOptions {
        batch_records: 200,
        buffer_records: 2_000,
        ..ProducerOptions::default()
    }
}

/// A [`paced`] producer on `topic` sending `value(0..n)` from a task: the producer, the
/// count of records enqueued so far, and the task (every record's outcome, in order).
pub async fn start_producing(
    client: &Client,
    topic: &str,
    n: usize,
) -> (
    Arc<Producer>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<Vec<Result<Delivery, Error>>>,
) {
    let producer = Arc::new(
        Producer::new(client, topic, paced())
            .await
            .expect("starting the producer"),
    );
    let enqueued = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(produce(
        Arc::clone(&producer),
        n,
        |i| ProducerRecord::new(value(i)),
        Arc::clone(&enqueued),
    ));
    (producer, enqueued, task)
}

/// Waits until `counter` reaches `at` (or the producer finished, whichever first).
pub async fn wait_for(
    counter: &AtomicUsize,
    at: usize,
    done: &tokio::task::JoinHandle<impl Sized>,
) {
    within(DEADLINE, "waiting for progress", async {
        while counter.load(Ordering::SeqCst) < at && !done.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Where each record was found: index → (partition, offset).
pub type Positions = HashMap<usize, (u32, u64)>;

/// Reads the whole topic back with a fresh [`Reader`] from the earliest offset and checks
/// it holds exactly `n` records, `0..n`, each once.
pub async fn read_back(client: &Client, topic: &str, n: usize) -> Positions {
    let positions = read_stored(client, topic).await;
    assert_exactly(&positions, n);
    positions
}

/// Reads every record stored in `topic` (the partitions' lengths say how many) and checks
/// each partition reads in order without gaps and no value is stored twice.
pub async fn read_stored(client: &Client, topic: &str) -> Positions {
    let info = within(
        DEADLINE,
        "describing the topic",
        client.describe_topic(topic),
    )
    .await
    .expect("describing the topic");
    let stored: u64 = info
        .partition_info
        .iter()
        .map(|p| p.end_offset - p.start_offset)
        .sum();
    let mut reader = Reader::new(
        client,
        topic,
        ReaderOptions {
            start: Start::Earliest,
            ..ReaderOptions::default()
        },
    )
    .await
    .expect("opening a reader");
    let mut positions = Positions::with_capacity(stored as usize);
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..stored {
        let m = within(DEADLINE, "reading the topic back", reader.next())
            .await
            .expect("a reader never ends")
            .expect("reading the topic back");
        let expected = next.entry(m.partition).or_insert(0);
        assert_eq!(
            m.offset, *expected,
            "partition {} read out of order or with a gap",
            m.partition
        );
        *expected += 1;
        let i = index_of(&m.value);
        if let Some(first) = positions.insert(i, (m.partition, m.offset)) {
            panic!(
                "record {i} is stored twice: at {first:?} and at {:?}",
                (m.partition, m.offset)
            );
        }
    }
    positions
}

/// Checks that exactly the records `0..n` are stored.
pub fn assert_exactly(positions: &Positions, n: usize) {
    let missing: Vec<usize> = (0..n).filter(|i| !positions.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} records are missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(positions.len(), n, "records stored");
}

/// Checks that every acknowledged record is stored where its delivery says, then that
/// every record was acknowledged.
pub fn check_deliveries(results: &[Result<Delivery, Error>], positions: &Positions) {
    check_acknowledged(results, positions);
    assert_all_acknowledged(results);
}

/// Checks that every acknowledged record is stored where its delivery says.
pub fn check_acknowledged(results: &[Result<Delivery, Error>], positions: &Positions) {
    let by_position: HashMap<(u32, u64), usize> =
        positions.iter().map(|(&i, &pos)| (pos, i)).collect();
    for (i, r) in results.iter().enumerate() {
        if let Ok(d) = r {
            let pos = (d.partition, d.offset);
            assert_eq!(
                positions.get(&i),
                Some(&pos),
                "record {i} was acknowledged at {pos:?}, which holds record {:?}",
                by_position.get(&pos)
            );
        }
    }
}

/// Checks that no record failed, summarising the failures if some did.
pub fn assert_all_acknowledged(results: &[Result<Delivery, Error>]) {
    let failed: Vec<(usize, &Error)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (_, e) in &failed {
        *kinds.entry(format!("{e:?}")).or_default() += 1;
    }
    assert!(
        failed.is_empty(),
        "{} of {} records failed ({kinds:?}), e.g. {:?}",
        failed.len(),
        results.len(),
        failed
            .iter()
            .take(3)
            .map(|(i, e)| format!("record {i}: {e} ({e:?})"))
            .collect::<Vec<_>>()
    );
}

/// Tracks what a consumer saw: every record must arrive, duplicates are counted.
#[derive(Default)]
pub struct Seen {
    counts: HashMap<usize, u32>,
    pub duplicates: usize,
}

impl Seen {
    /// Records one delivery; returns how many times this record has now been seen.
    pub fn add(&mut self, m: &Message) -> u32 {
        let c = self.counts.entry(index_of(&m.value)).or_insert(0);
        *c += 1;
        if *c > 1 {
            self.duplicates += 1;
        }
        *c
    }

    pub fn unique(&self) -> usize {
        self.counts.len()
    }
}

/// Reads `n` records with `reader` (which must start at offset 0 of every partition),
/// calling `disrupt` once the count of records read reaches each of `at`. Every record
/// must arrive exactly once and each partition in order without gaps.
pub async fn read_through(
    reader: &mut Reader,
    n: usize,
    at: &[usize],
    mut disrupt: impl AsyncFnMut(usize),
) {
    let mut seen = Seen::default();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut at = at.iter().copied().peekable();
    for read in 0..n {
        while at.next_if(|&a| a <= read).is_some() {
            disrupt(read).await;
        }
        let m = within(DEADLINE, "reading", reader.next())
            .await
            .expect("a reader never ends")
            .unwrap_or_else(|e| panic!("reading after {read} records: {e} ({e:?})"));
        let expected = next.entry(m.partition).or_insert(0);
        assert_eq!(
            m.offset, *expected,
            "after {read} records, partition {} skipped or repeated offsets",
            m.partition
        );
        *expected += 1;
        assert_eq!(
            seen.add(&m),
            1,
            "record {} delivered twice",
            index_of(&m.value)
        );
    }
    assert_eq!(seen.unique(), n);
}

/// Consumes `n` distinct records as a group member that commits as it goes (the highest
/// next offset seen, every `commit_every` records), calling `disrupt` when the count of
/// distinct records reaches each of `at`. Every record must arrive; a record may come
/// again only after a disruption that found it uncommitted. Returns the duplicates and the
/// member id before each disruption.
pub async fn consume_through(
    member: &mut spool_client::GroupConsumer,
    n: usize,
    commit_every: usize,
    at: &[usize],
    mut disrupt: impl AsyncFnMut(usize),
) -> (usize, Vec<String>) {
    let mut seen = Seen::default();
    let mut ids = Vec::new();
    // Per partition: the next offset to read as far as the caller got, and the offset
    // whose commit the broker acknowledged.
    let mut high: BTreeMap<u32, u64> = BTreeMap::new();
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    // The acknowledged commits at each disruption.
    let mut snapshots: Vec<BTreeMap<u32, u64>> = Vec::new();
    let mut at = at.iter().copied().peekable();
    let mut since_commit = 0;
    while seen.unique() < n {
        if at.peek().is_some_and(|&a| a <= seen.unique()) {
            at.next();
            commit_all(member, &high, &mut acked).await;
            snapshots.push(acked.clone());
            ids.push(member.state().member_id);
            disrupt(seen.unique()).await;
            continue;
        }
        let m = match tokio::time::timeout(DEADLINE, member.next()).await {
            Ok(m) => m,
            Err(_) => panic!(
                "no record within {DEADLINE:?} after {} distinct records ({} duplicates, \
                 {since_commit} since the last commit) and disruptions with commits at \
                 {snapshots:?}; member {:?}; committed {acked:?}; read up to {high:?}",
                seen.unique(),
                seen.duplicates,
                member.state()
            ),
        };
        let m = m
            .expect("a group consumer never ends")
            .unwrap_or_else(|e| panic!("consuming after {} records: {e} ({e:?})", seen.unique()));
        let times = seen.add(&m);
        if times > 1 {
            // Each disruption may re-deliver what was not committed at that moment.
            let allowed = 1 + snapshots
                .iter()
                .filter(|s| s.get(&m.partition).copied().unwrap_or(0) <= m.offset)
                .count();
            assert!(
                times as usize <= allowed,
                "record at partition {} offset {} delivered {times} times, but it was \
                 committed before the disruptions (commits at each: {snapshots:?})",
                m.partition,
                m.offset
            );
        }
        let h = high.entry(m.partition).or_insert(0);
        *h = (*h).max(m.offset + 1);
        since_commit += 1;
        if since_commit >= commit_every {
            since_commit = 0;
            commit_all(member, &high, &mut acked).await;
        }
    }
    commit_all(member, &high, &mut acked).await;
    (seen.duplicates, ids)
}

/// Commits every partition whose high-water mark moved, retrying retriable failures.
async fn commit_all(
    member: &spool_client::GroupConsumer,
    high: &BTreeMap<u32, u64>,
    acked: &mut BTreeMap<u32, u64>,
) {
    for (&p, &offset) in high {
        if acked.get(&p).copied().unwrap_or(0) >= offset {
            continue;
        }
        let began = Instant::now();
        loop {
            match within(DEADLINE, "committing", member.commit(p, offset)).await {
                Ok(()) => break,
                Err(e) if e.is_retriable() && began.elapsed() < DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("committing partition {p} offset {offset}: {e} ({e:?})"),
            }
        }
        acked.insert(p, offset);
    }
}
