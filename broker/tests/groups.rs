//! End-to-end tests of consumer groups against a real `spoold`: `Consume` (assignment,
//! rebalancing, session timeouts, reconnects, fencing, stale commits, flow control,
//! auto-commit, broker restarts, at-least-once and exactly-once delivery over 100k records),
//! `ListGroups` and `DescribeGroup`.
//!
//! Every member is driven through [`Member`], which checks the stream's invariants on each
//! message it receives: the first message is an `Assignment`; generations only grow; a batch
//! only carries a partition of the member's current assignment, under its generation; and
//! within one ownership of a partition, batches follow each other with no gap and no repeat.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use spool_proto::v1::consume_request::Kind as Req;
use spool_proto::v1::consume_response::Kind as Resp;
use spool_proto::v1::*;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

/// A `JoinGroup` for a new member with the broker's defaults.
fn join(group: &str, topic: &str) -> JoinGroup {
    JoinGroup {
        group: group.into(),
        topic: topic.into(),
        ..JoinGroup::default()
    }
}

/// A `JoinGroup` with a session timeout, in milliseconds.
fn join_with_timeout(group: &str, topic: &str, session_timeout_ms: u32) -> JoinGroup {
    JoinGroup {
        session_timeout_ms,
        ..join(group, topic)
    }
}

/// Appends `p{p}-{i}` for `i` in `range` to each of the first `partitions` partitions, so
/// a record's value names its partition and offset.
async fn fill(c: &mut Client, topic: &str, partitions: u32, range: std::ops::Range<u32>) {
    for p in 0..partitions {
        append(c, topic, p, recs(&format!("p{p}"), range.clone())).await;
    }
}

/// `offsets` of a range, as a vector.
fn span(range: std::ops::Range<u64>) -> Vec<u64> {
    range.collect()
}

/// One group member: one `Consume` stream and everything received on it so far.
struct Member {
    tx: mpsc::Sender<ConsumeRequest>,
    rx: tonic::Streaming<ConsumeResponse>,
    id: String,
    generation: u64,
    partitions: BTreeSet<u32>,
    assignments: Vec<Assignment>,
    /// Every delivered record with its partition, in arrival order.
    records: Vec<(u32, Record)>,
    /// Every delivered batch as (partition, offset after its last record), in arrival order.
    batches: Vec<(u32, u64)>,
    acks: Vec<CommitAck>,
    /// Per owned partition, the offset after the last record delivered in this ownership.
    next: BTreeMap<u32, u64>,
}

impl Member {
    /// Opens a `Consume` stream with `join`; fails with the call's (or the stream's first)
    /// error. Checks that the first message is an `Assignment`.
    async fn open(c: &mut Client, join: JoinGroup) -> Result<Member, Status> {
        Member::open_with(
            c,
            ConsumeRequest {
                kind: Some(Req::Join(join)),
            },
        )
        .await
    }

    /// Opens a `Consume` stream whose first request is `first`.
    async fn open_with(c: &mut Client, first: ConsumeRequest) -> Result<Member, Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(first).await.expect("queue the first request");
        let rx = within("Consume", c.consume(ReceiverStream::new(rx)))
            .await?
            .into_inner();
        let mut m = Member {
            tx,
            rx,
            id: String::new(),
            generation: 0,
            partitions: BTreeSet::new(),
            assignments: Vec::new(),
            records: Vec::new(),
            batches: Vec::new(),
            acks: Vec::new(),
            next: BTreeMap::new(),
        };
        match m.try_pump().await? {
            Some(Resp::Assignment(_)) => Ok(m),
            other => panic!("the first message of a Consume stream was {other:?}"),
        }
    }

    /// Receives one message (waiting at most [`PATIENCE`]) and applies it; `None` at the
    /// end of the stream.
    async fn try_pump(&mut self) -> Result<Option<Resp>, Status> {
        let msg = within("a Consume message", self.rx.message()).await?;
        Ok(msg.map(|m| self.apply(m)))
    }

    /// Receives and applies one message; fails the test on an error or the end.
    async fn pump(&mut self) -> Resp {
        match self.try_pump().await {
            Ok(Some(kind)) => kind,
            Ok(None) => panic!("member {}: the Consume stream ended", self.id),
            Err(s) => panic!("member {}: the Consume stream failed: {s}", self.id),
        }
    }

    /// Like [`Member::pump`] but with no time limit, for members that may idle while others
    /// work; the caller bounds the wait.
    async fn pump_unbounded(&mut self) -> Resp {
        match self.rx.message().await {
            Ok(Some(m)) => self.apply(m),
            Ok(None) => panic!("member {}: the Consume stream ended", self.id),
            Err(s) => panic!("member {}: the Consume stream failed: {s}", self.id),
        }
    }

    /// The next message if one arrives within `quiet`; `None` if none does.
    async fn pump_within(&mut self, quiet: Duration) -> Option<Resp> {
        match tokio::time::timeout(quiet, self.rx.message()).await {
            Err(_) => None,
            Ok(Ok(Some(m))) => Some(self.apply(m)),
            Ok(Ok(None)) => panic!("member {}: the Consume stream ended", self.id),
            Ok(Err(s)) => panic!("member {}: the Consume stream failed: {s}", self.id),
        }
    }

    /// Receives until the stream fails; returns its status. Fails if it ends cleanly.
    async fn error(&mut self) -> Status {
        loop {
            match self.try_pump().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("member {}: the stream ended without an error", self.id),
                Err(s) => return s,
            }
        }
    }

    /// Receives until the stream ends, with an error or without.
    async fn closed(&mut self) {
        while let Ok(Some(_)) = self.try_pump().await {}
    }

    /// Checks one message against the stream's invariants and records it.
    fn apply(&mut self, msg: ConsumeResponse) -> Resp {
        let kind = msg.kind.expect("a ConsumeResponse without kind");
        match &kind {
            Resp::Assignment(a) => {
                assert!(!a.member_id.is_empty(), "an Assignment without member_id");
                if self.assignments.is_empty() {
                    self.id = a.member_id.clone();
                } else {
                    assert_eq!(a.member_id, self.id, "the member id changed mid-stream");
                    assert!(
                        a.generation > self.generation,
                        "member {}: generation went from {} to {}",
                        self.id,
                        self.generation,
                        a.generation
                    );
                }
                assert!(
                    a.partitions.windows(2).all(|w| w[0] < w[1]),
                    "partitions not ascending: {:?}",
                    a.partitions
                );
                self.generation = a.generation;
                self.partitions = a.partitions.iter().copied().collect();
                // A revoked partition's delivery ends here; if it comes back, it restarts
                // from the committed offset.
                let owned = &self.partitions;
                self.next.retain(|p, _| owned.contains(p));
                self.assignments.push(a.clone());
            }
            Resp::Batch(b) => {
                assert!(
                    self.partitions.contains(&b.partition),
                    "member {} got a batch of partition {} outside its assignment {:?} (generation {})",
                    self.id,
                    b.partition,
                    self.partitions,
                    self.generation
                );
                assert_eq!(
                    b.generation, self.generation,
                    "member {}: a batch of partition {} under another generation",
                    self.id, b.partition
                );
                assert!(!b.records.is_empty(), "an empty RecordBatch");
                let first = b.records[0].offset;
                if let Some(&next) = self.next.get(&b.partition) {
                    assert_eq!(
                        first, next,
                        "member {}: partition {} skipped or repeated offsets",
                        self.id, b.partition
                    );
                }
                for (i, r) in b.records.iter().enumerate() {
                    assert_eq!(r.offset, first + i as u64, "a batch with a gap");
                }
                let end = b.records.last().expect("not empty").offset + 1;
                assert!(end <= b.end_offset, "a batch past its end_offset");
                self.next.insert(b.partition, end);
                self.batches.push((b.partition, end));
                self.records
                    .extend(b.records.iter().map(|r| (b.partition, r.clone())));
            }
            Resp::CommitAck(a) => self.acks.push(a.clone()),
        }
        kind
    }

    /// Pumps until `done` holds (checked before each message).
    async fn wait_until(&mut self, what: &str, done: impl Fn(&Member) -> bool) {
        let deadline = Instant::now() + 2 * PATIENCE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "member {}: {what}: not after {:?}",
                self.id,
                2 * PATIENCE
            );
            self.pump().await;
        }
    }

    /// Pumps until every owned partition is delivered up to `end`.
    async fn wait_caught_up(&mut self, end: u64) {
        self.wait_until(
            &format!("every owned partition delivered up to {end}"),
            |m| m.partitions.iter().all(|p| m.next.get(p) == Some(&end)),
        )
        .await;
    }

    /// Pumps until an assignment with a generation above `generation` arrived.
    async fn wait_generation_above(&mut self, generation: u64) {
        self.wait_until(&format!("a generation above {generation}"), |m| {
            m.generation > generation
        })
        .await;
    }

    async fn send(&self, kind: Req) {
        self.tx
            .send(ConsumeRequest { kind: Some(kind) })
            .await
            .expect("the Consume request stream is open");
    }

    /// Sends a commit without waiting for its `CommitAck`.
    async fn commit(&self, partition: u32, offset: u64) {
        self.send(Req::Commit(CommitRequest { partition, offset }))
            .await;
    }

    /// Commits and returns the `CommitAck` answering it (accepted or not).
    async fn commit_and_wait(&mut self, partition: u32, offset: u64) -> CommitAck {
        let seen = self.acks.len();
        self.commit(partition, offset).await;
        self.wait_until(&format!("the CommitAck of {partition}@{offset}"), |m| {
            m.acks[seen..]
                .iter()
                .any(|a| a.partition == partition && a.offset == offset)
        })
        .await;
        self.acks[seen..]
            .iter()
            .find(|a| a.partition == partition && a.offset == offset)
            .cloned()
            .expect("found above")
    }

    /// Commits and checks the commit was accepted.
    async fn commit_ok(&mut self, partition: u32, offset: u64) {
        let ack = self.commit_and_wait(partition, offset).await;
        assert!(
            !ack.rejected,
            "member {}: commit {partition}@{offset} rejected: {}",
            self.id, ack.reason
        );
    }

    /// Offsets delivered for `partition`, from record index `from` on, in arrival order.
    fn offsets_since(&self, from: usize, partition: u32) -> Vec<u64> {
        self.records[from..]
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, r)| r.offset)
            .collect()
    }

    fn offsets(&self, partition: u32) -> Vec<u64> {
        self.offsets_since(0, partition)
    }
}

/// Checks a record's value is the `p{p}-{offset}` [`fill`] wrote there.
fn assert_filled(records: &[(u32, Record)]) {
    for (p, r) in records {
        assert_eq!(
            String::from_utf8_lossy(&r.value),
            format!("p{p}-{}", r.offset),
            "the record at {p}@{} holds the wrong value",
            r.offset
        );
    }
}

async fn describe_group(c: &mut Client, group: &str, topic: Option<&str>) -> DescribeGroupResponse {
    let req = DescribeGroupRequest {
        group: group.into(),
        topic: topic.map(str::to_string),
    };
    within("DescribeGroup", c.describe_group(req))
        .await
        .unwrap_or_else(|s| panic!("DescribeGroup {group}: {s}"))
        .into_inner()
}

/// The committed offset of each partition (`None` where never committed).
async fn committed(c: &mut Client, group: &str, topic: &str) -> Vec<Option<u64>> {
    get_offsets(c, group, topic)
        .await
        .iter()
        .map(|p| p.committed)
        .collect()
}

/// Polls `DescribeGroup` until `member` shows as disconnected (the broker saw its stream end).
async fn wait_disconnected(c: &mut Client, group: &str, topic: &str, member: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let d = describe_group(c, group, Some(topic)).await;
        let m = d.topics[0].members.iter().find(|m| m.member_id == member);
        if m.is_some_and(|m| !m.connected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {member} still shows as connected: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Assignment and rebalancing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_single_member_is_assigned_every_partition_and_reads_each_from_the_start() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 4, FsyncPolicy::Always).await;
    fill(&mut c, "t", 4, 0..10).await;

    let mut m = Member::open(&mut c, join("g", "t")).await.unwrap();
    assert!(!m.id.is_empty(), "the broker chose no member id");
    assert_eq!(m.assignments[0].partitions, [0, 1, 2, 3]);
    assert!(m.generation >= 1);
    m.wait_caught_up(10).await;
    for p in 0..4 {
        assert_eq!(m.offsets(p), span(0..10), "partition {p}");
    }
    assert_filled(&m.records);

    // Then it tails live appends.
    append(&mut c, "t", 2, recs("p2", 10..12)).await;
    m.wait_until("the live records", |m| m.records.len() == 42)
        .await;
    assert_eq!(m.offsets(2), span(0..12));
    assert_eq!(m.assignments.len(), 1, "no rebalance with one member");
}

#[tokio::test]
async fn a_second_member_joining_splits_the_partitions_evenly_under_a_new_generation() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 6, FsyncPolicy::Always).await;

    let mut a = Member::open(&mut c, join("g", "t")).await.unwrap();
    assert_eq!(a.assignments[0].partitions, [0, 1, 2, 3, 4, 5]);
    let first = a.generation;

    let b = Member::open(&mut c, join("g", "t")).await.unwrap();
    assert_ne!(a.id, b.id, "two new members got the same id");
    assert!(b.generation > first, "b joined under the old generation");
    a.wait_generation_above(first).await;
    assert_eq!(
        a.generation, b.generation,
        "a and b disagree on the generation"
    );
    assert_eq!(
        a.partitions.len(),
        3,
        "{:?} vs {:?}",
        a.partitions,
        b.partitions
    );
    assert_eq!(
        b.partitions.len(),
        3,
        "{:?} vs {:?}",
        a.partitions,
        b.partitions
    );
    assert!(a.partitions.is_disjoint(&b.partitions));
    let union: BTreeSet<u32> = a.partitions.union(&b.partitions).copied().collect();
    assert_eq!(union, (0..6).collect());
    // Sticky: a only gave partitions away.
    let before: BTreeSet<u32> = a.assignments[0].partitions.iter().copied().collect();
    assert!(a.partitions.is_subset(&before));

    // New records reach exactly one member each: the one that owns the partition (the
    // member checks every batch against its assignment).
    let mut b = b;
    fill(&mut c, "t", 6, 0..5).await;
    a.wait_caught_up(5).await;
    b.wait_caught_up(5).await;
    assert_eq!(a.records.len() + b.records.len(), 30);
    assert_filled(&a.records);
    assert_filled(&b.records);

    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.topics[0].generation, a.generation);
    assert_eq!(d.topics[0].members.len(), 2);
}

#[tokio::test]
async fn a_dropped_member_s_partitions_move_after_its_session_timeout_and_resume_at_the_committed_offset()
 {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 4, FsyncPolicy::Always).await;
    fill(&mut c, "t", 4, 0..50).await;

    let mut a = Member::open(&mut c, join_with_timeout("g", "t", 500))
        .await
        .unwrap();
    let mut b = Member::open(&mut c, join_with_timeout("g", "t", 60_000))
        .await
        .unwrap();
    a.wait_generation_above(a.assignments[0].generation).await;
    assert_eq!(a.generation, b.generation);
    a.wait_caught_up(50).await;
    b.wait_caught_up(50).await;

    // a processed everything it owns but commits one partition only partly.
    let mine: Vec<u32> = a.partitions.iter().copied().collect();
    assert_eq!(mine.len(), 2);
    let (partly, fully) = (mine[0], mine[1]);
    a.commit_ok(partly, 20).await;
    a.commit_ok(fully, 50).await;
    let generation = b.generation;
    drop(a);

    // After a's session timeout, b owns everything...
    b.wait_until("every partition", |m| m.partitions.len() == 4)
        .await;
    assert!(b.generation > generation);
    let mark = b.records.len();
    // ...and resumes a's partitions at the committed offsets: the uncommitted records of
    // `partly` again, nothing of `fully` until new records come.
    fill(&mut c, "t", 4, 50..55).await;
    b.wait_caught_up(55).await;
    assert_eq!(b.offsets_since(mark, partly), span(20..55));
    assert_eq!(b.offsets_since(mark, fully), span(50..55));
    for p in 0..4 {
        if p != partly && p != fully {
            assert_eq!(
                b.offsets_since(mark, p),
                span(50..55),
                "b's own partition {p}"
            );
        }
    }
    assert_filled(&b.records);

    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.topics[0].members.len(), 1, "{d:?}");
    assert_eq!(d.topics[0].members[0].member_id, b.id);
}

#[tokio::test]
async fn a_reconnect_with_the_same_member_id_within_the_session_timeout_causes_no_rebalance() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 4, FsyncPolicy::Always).await;
    fill(&mut c, "t", 4, 0..20).await;

    // A long timeout: the reconnect must land within it even on a slow machine.
    let mut a = Member::open(&mut c, join_with_timeout("g", "t", 120_000))
        .await
        .unwrap();
    let mut b = Member::open(&mut c, join_with_timeout("g", "t", 120_000))
        .await
        .unwrap();
    a.wait_generation_above(a.assignments[0].generation).await;
    let generation = b.generation;
    a.wait_caught_up(20).await;
    b.wait_caught_up(20).await;
    let mine: Vec<u32> = a.partitions.iter().copied().collect();
    a.commit_ok(mine[0], 10).await;
    a.commit_ok(mine[1], 20).await;
    let (id, partitions) = (a.id.clone(), a.partitions.clone());
    drop(a);
    // Make sure the broker saw the stream end, so this is a reconnect and not a takeover.
    wait_disconnected(&mut c, "g", "t", &id).await;

    let again = JoinGroup {
        member_id: id.clone(),
        ..join_with_timeout("g", "t", 120_000)
    };
    let mut a = Member::open(&mut c, again).await.unwrap();
    assert_eq!(a.id, id);
    assert_eq!(a.generation, generation, "the reconnect caused a rebalance");
    assert_eq!(a.partitions, partitions);

    // It resumes at its commits; b saw no new assignment.
    fill(&mut c, "t", 4, 20..21).await;
    a.wait_caught_up(21).await;
    b.wait_caught_up(21).await;
    assert_eq!(a.offsets(mine[0]), span(10..21));
    assert_eq!(a.offsets(mine[1]), span(20..21));
    assert_eq!(b.assignments.len(), 1, "b was told of a rebalance");
    assert_eq!(b.generation, generation);

    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.topics[0].generation, generation);
    assert!(d.topics[0].members.iter().all(|m| m.connected), "{d:?}");
}

// ---------------------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------------------

/// A member consumes, commits part of it, the broker goes down (SIGTERM or SIGKILL) and
/// comes back; the member rejoins under its id and resumes exactly at its commits.
async fn resume_after_restart(kill: bool) {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 3, FsyncPolicy::Always).await;
    fill(&mut c, "t", 3, 0..100).await;

    let joining = JoinGroup {
        member_id: "worker-1".into(),
        ..join("g", "t")
    };
    let mut m = Member::open(&mut c, joining.clone()).await.unwrap();
    assert_eq!(m.id, "worker-1");
    m.wait_caught_up(100).await;
    m.commit_ok(0, 40).await;
    m.commit_ok(1, 100).await;
    m.commit_ok(2, 0).await;

    // Mid-consumption: the stream is still open when the broker goes.
    if kill {
        broker.kill().await;
    } else {
        broker.stop().await;
    }
    m.closed().await;
    broker.restart();
    let mut c = broker.client().await;
    assert_eq!(
        committed(&mut c, "g", "t").await,
        [Some(40), Some(100), Some(0)]
    );

    let mut m = Member::open(&mut c, joining).await.unwrap();
    assert_eq!(m.id, "worker-1");
    assert_eq!(m.assignments[0].partitions, [0, 1, 2]);
    fill(&mut c, "t", 3, 100..101).await;
    m.wait_caught_up(101).await;
    assert_eq!(m.offsets(0), span(40..101));
    assert_eq!(m.offsets(1), span(100..101));
    assert_eq!(m.offsets(2), span(0..101));
    assert_filled(&m.records);
}

#[tokio::test]
async fn a_member_resumes_from_its_commits_after_a_broker_restart() {
    resume_after_restart(false).await;
}

#[tokio::test]
async fn acknowledged_commits_survive_kill_9_and_a_member_resumes_from_them() {
    resume_after_restart(true).await;
}

// ---------------------------------------------------------------------------------------
// Many records, many members
// ---------------------------------------------------------------------------------------

const MANY: u64 = 100_000;
const MANY_PARTITIONS: u32 = 12;

/// Writes record ids `0..MANY` (as decimal values) over the partitions, id `i` to
/// partition `i % MANY_PARTITIONS`, in large appends.
async fn produce_many(c: &mut Client, topic: &str) {
    create_topic(c, topic, MANY_PARTITIONS, FsyncPolicy::Never).await;
    for p in 0..MANY_PARTITIONS {
        let ids: Vec<u64> = (u64::from(p)..MANY)
            .step_by(MANY_PARTITIONS as usize)
            .collect();
        for chunk in ids.chunks(5_000) {
            append(
                c,
                topic,
                p,
                chunk.iter().map(|i| rec(i.to_string())).collect(),
            )
            .await;
        }
    }
}

fn ids(records: &[(u32, Record)]) -> Vec<u64> {
    records
        .iter()
        .map(|(_, r)| {
            String::from_utf8_lossy(&r.value)
                .parse()
                .expect("a numeric record")
        })
        .collect()
}

/// Polls until the group committed every partition up to its end.
async fn wait_all_committed(c: &mut Client, group: &str, topic: &str) {
    let deadline = Instant::now() + 3 * PATIENCE;
    loop {
        let offsets = get_offsets(c, group, topic).await;
        if offsets.iter().all(|p| p.committed == Some(p.end_offset)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not commit everything: {offsets:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member that commits each batch as soon as it has it, until `stop`; or, with `crash_at`,
/// until it has that many records: then it drops its stream without committing its last
/// batch. Returns the ids it consumed.
async fn run_member(
    mut c: Client,
    mut stop: watch::Receiver<bool>,
    crash_at: Option<usize>,
) -> Vec<u64> {
    let mut m = Member::open(&mut c, join_with_timeout("g", "many", 500))
        .await
        .unwrap();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            kind = m.pump_unbounded() => {
                if let Resp::Batch(b) = kind {
                    if crash_at.is_some_and(|n| m.records.len() >= n) {
                        break;
                    }
                    let end = b.records.last().expect("not empty").offset + 1;
                    m.commit(b.partition, end).await;
                }
            }
        }
    }
    ids(&m.records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_consume_100k_records_over_12_partitions_at_least_once_despite_a_crash() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    produce_many(&mut c, "many").await;

    let (stop_tx, stop) = watch::channel(false);
    let members: Vec<_> = [None, None, Some(5_000)]
        .into_iter()
        .map(|crash_at| tokio::spawn(run_member(c.clone(), stop.clone(), crash_at)))
        .collect();
    wait_all_committed(&mut c, "g", "many").await;
    stop_tx.send(true).expect("members listen");

    let mut seen = vec![0u32; MANY as usize];
    let mut total = 0;
    for m in members {
        for id in m.await.expect("a member failed") {
            seen[id as usize] += 1;
            total += 1;
        }
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == 0).collect();
    assert!(
        missing.is_empty(),
        "{} records never consumed, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "consumed {total} records for {MANY}: {} duplicates",
        total - MANY as usize
    );
}

/// One member of the sequential run: joins, processes whole batches until it has
/// `quota` records, commits exactly what it processed, waits for the acks, closes.
async fn consume_then_commit_and_close(c: &mut Client, quota: usize) -> Vec<u64> {
    // Room for everything uncommitted: this member commits only at the end.
    let joining = JoinGroup {
        max_in_flight_records: MANY as u32,
        ..join_with_timeout("g", "many", 500)
    };
    let mut m = Member::open(c, joining).await.unwrap();
    m.wait_until(&format!("{quota} records"), |m| m.records.len() >= quota)
        .await;
    let processed = m.records.len();
    let done = m.next.clone();
    for (p, end) in done {
        m.commit_ok(p, end).await;
    }
    ids(&m.records[..processed])
}

#[tokio::test]
async fn three_members_consume_100k_records_exactly_once_when_each_commits_before_closing() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    produce_many(&mut c, "many").await;

    // One after another: each takes over the partitions of the ones that closed before
    // (during their session timeout, it shares the group with them).
    let third = MANY as usize / 3;
    let mut consumed = consume_then_commit_and_close(&mut c, third).await;
    consumed.extend(consume_then_commit_and_close(&mut c, third).await);
    let rest = MANY as usize - consumed.len();
    consumed.extend(consume_then_commit_and_close(&mut c, rest).await);

    let mut seen = vec![0u32; MANY as usize];
    for &id in &consumed {
        seen[id as usize] += 1;
    }
    let dups: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] > 1).collect();
    assert!(
        dups.is_empty(),
        "{} records consumed twice, first {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    assert_eq!(consumed.len(), MANY as usize);
    wait_all_committed(&mut c, "g", "many").await;
}

// ---------------------------------------------------------------------------------------
// Commits
// ---------------------------------------------------------------------------------------

/// Two partitions of ten records each; member `a` read all of them and committed 3 in
/// each, then `b` joined and took one of them. Returns (broker, client, a, b, the partition
/// `b` took).
async fn half_moved_to_a_second_member() -> (Broker, Client, Member, Member, u32) {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    fill(&mut c, "t", 2, 0..10).await;

    let mut a = Member::open(&mut c, join("g", "t")).await.unwrap();
    a.wait_caught_up(10).await;
    a.commit_ok(0, 3).await;
    a.commit_ok(1, 3).await;

    let b = Member::open(&mut c, join("g", "t")).await.unwrap();
    a.wait_until("the revocation", |m| m.partitions.len() == 1)
        .await;
    let kept = *a.partitions.first().expect("one partition");
    let moved = 1 - kept;
    assert_eq!(b.partitions, BTreeSet::from([moved]));
    (broker, c, a, b, moved)
}

#[tokio::test]
async fn a_commit_for_a_partition_revoked_by_a_rebalance_is_rejected_and_moves_no_offset() {
    let (_broker, mut c, mut a, mut b, revoked) = half_moved_to_a_second_member().await;
    let kept = 1 - revoked;

    let ack = a.commit_and_wait(revoked, 7).await;
    assert!(ack.rejected, "a stale commit was accepted: {ack:?}");
    assert!(!ack.reason.is_empty(), "a rejection without a reason");
    a.commit_ok(kept, 5).await;
    let mut want = [None, None];
    want[revoked as usize] = Some(3);
    want[kept as usize] = Some(5);
    assert_eq!(committed(&mut c, "g", "t").await, want);

    // The new owner starts the revoked partition at the last accepted commit.
    b.wait_caught_up(10).await;
    assert_eq!(b.offsets(revoked), span(3..10));

    // A partition the member never owned, or that does not exist, is refused too.
    let ack = b.commit_and_wait(kept, 9).await;
    assert!(ack.rejected, "{ack:?}");
    let ack = b.commit_and_wait(99, 1).await;
    assert!(ack.rejected, "{ack:?}");
    assert_eq!(committed(&mut c, "g", "t").await, want);
}

#[tokio::test]
async fn a_commit_from_an_earlier_assignment_cannot_move_the_offset_back() {
    // a read everything, but had committed little when half of it moved to b.
    let (_broker, mut c, mut a, mut b, moved) = half_moved_to_a_second_member().await;
    // b processes the moved partition and commits further than a ever did.
    b.wait_caught_up(10).await;
    b.commit_ok(moved, 8).await;
    // b leaves; the partition comes back to a, which still holds records delivered under
    // its first assignment.
    b.send(Req::Leave(LeaveGroup {})).await;
    a.wait_until("the partition's return", |m| m.partitions.len() == 2)
        .await;
    let ack = a.commit_and_wait(moved, 5).await;
    assert!(
        ack.rejected,
        "a commit from before the partition moved away and back was accepted: {ack:?}"
    );
    assert!(
        ack.reason.contains("earlier assignment"),
        "the reason should say why: {:?}",
        ack.reason
    );
    let mut want = [None, None];
    want[moved as usize] = Some(8);
    want[1 - moved as usize] = Some(3);
    assert_eq!(committed(&mut c, "g", "t").await, want);
    // Offsets at or past where the assignment started are fine.
    a.commit_ok(moved, 9).await;
}

#[tokio::test]
async fn every_commit_is_answered_even_when_a_later_one_overtakes_it_in_the_queue() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    fill(&mut c, "t", 1, 0..100).await;
    let mut m = Member::open(&mut c, join("g", "t")).await.unwrap();
    m.wait_caught_up(100).await;
    // Sent back to back without waiting: while the first is being written, the rest queue
    // and are written as one (the latest offset); each request still gets its answer.
    let offsets = [10, 20, 30, 40, 50];
    let seen = m.acks.len();
    for o in offsets {
        m.commit(0, o).await;
    }
    m.wait_until("an answer to every commit", |m| {
        m.acks.len() - seen >= offsets.len()
    })
    .await;
    let mut answered: Vec<u64> = m.acks[seen..].iter().map(|a| a.offset).collect();
    assert!(
        m.acks[seen..].iter().all(|a| !a.rejected),
        "{:?}",
        &m.acks[seen..]
    );
    answered.sort_unstable();
    assert_eq!(answered, offsets);
    assert_eq!(committed(&mut c, "g", "t").await, [Some(50)]);
}

#[tokio::test]
async fn an_ack_with_auto_commit_commits_the_acknowledged_batches() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    fill(&mut c, "t", 2, 0..10).await;

    let auto = JoinGroup {
        auto_commit: true,
        ..join("g", "t")
    };
    let mut m = Member::open(&mut c, auto).await.unwrap();
    m.wait_caught_up(10).await;
    assert!(m.batches.len() >= 2);

    // The first batch only.
    let (p, end) = m.batches[0];
    m.send(Req::Ack(Ack { batch_count: 1 })).await;
    m.wait_until("the auto-commit of batch 1", |m| {
        m.acks.iter().any(|a| a.partition == p && a.offset == end)
    })
    .await;
    assert!(m.acks.iter().all(|a| !a.rejected), "{:?}", m.acks);
    let mut want = [None, None];
    want[p as usize] = Some(end);
    assert_eq!(committed(&mut c, "g", "t").await, want);

    // All of them; a repeated Ack is harmless.
    let n = m.batches.len() as u64;
    m.send(Req::Ack(Ack { batch_count: n })).await;
    m.send(Req::Ack(Ack { batch_count: n })).await;
    m.wait_until("the auto-commit of every batch", |m| {
        (0..2).all(|p| m.acks.iter().any(|a| a.partition == p && a.offset == 10))
    })
    .await;
    assert_eq!(committed(&mut c, "g", "t").await, [Some(10), Some(10)]);
}

#[tokio::test]
async fn an_ack_without_auto_commit_commits_nothing() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    fill(&mut c, "t", 1, 0..10).await;

    let mut m = Member::open(&mut c, join("g", "t")).await.unwrap();
    m.wait_caught_up(10).await;
    m.send(Req::Ack(Ack { batch_count: 100 })).await;
    // Requests are handled in order: once this commit is acknowledged, the Ack was handled.
    m.commit_ok(0, 2).await;
    assert_eq!(committed(&mut c, "g", "t").await, [Some(2)]);
    assert_eq!(m.acks.len(), 1, "{:?}", m.acks);
}

// ---------------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn delivery_pauses_at_max_in_flight_records_and_resumes_after_commits() {
    const LIMIT: u64 = 100;
    const PER_PARTITION: u32 = 1_000;
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 3, FsyncPolicy::Always).await;
    fill(&mut c, "t", 3, 0..PER_PARTITION).await;
    let total = 3 * PER_PARTITION as usize;

    let limited = JoinGroup {
        max_in_flight_records: LIMIT as u32,
        ..join("g", "t")
    };
    let mut m = Member::open(&mut c, limited).await.unwrap();
    // Per partition, the offset the broker confirmed committed, and the last one asked for.
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    let mut asked: BTreeMap<u32, u64> = BTreeMap::new();
    // First without commits until a quiet second, then committing whatever arrived.
    let mut committing = false;
    let quiet = Duration::from_secs(1);
    while m.records.len() < total {
        // Records delivered and not yet committed before the next message. The broker
        // sends a CommitAck before any batch the commit made room for, so this is never
        // less than what the broker counted when it read the next batch.
        let uncommitted: u64 = m
            .next
            .iter()
            .map(|(p, end)| end - acked.get(p).copied().unwrap_or(0))
            .sum();
        match m.pump_within(quiet).await {
            Some(Resp::Batch(b)) => assert!(
                uncommitted < LIMIT,
                "a batch of {} records came with {uncommitted} uncommitted; the limit is {LIMIT}",
                b.records.len()
            ),
            Some(Resp::CommitAck(a)) => {
                assert!(!a.rejected, "{a:?}");
                acked.insert(a.partition, a.offset);
            }
            Some(Resp::Assignment(a)) => panic!("an unexpected rebalance: {a:?}"),
            None if !committing => {
                // Delivery paused well before the end (a slow broker would also be quiet;
                // the check above is what guards the limit).
                assert!(
                    m.records.len() < total / 2,
                    "{} of {total} records delivered without a commit",
                    m.records.len()
                );
                committing = true;
            }
            None => {}
        }
        if committing {
            for (&p, &end) in &m.next {
                if asked.get(&p) != Some(&end) {
                    m.commit(p, end).await;
                    asked.insert(p, end);
                }
            }
        }
    }
    assert!(committing, "everything came without a commit");
    for p in 0..3 {
        assert_eq!(m.offsets(p), span(0..u64::from(PER_PARTITION)));
    }
}

// ---------------------------------------------------------------------------------------
// Errors and fencing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn consume_rejects_a_stream_that_does_not_start_with_a_join_group() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;

    let commit_first = ConsumeRequest {
        kind: Some(Req::Commit(CommitRequest {
            partition: 0,
            offset: 0,
        })),
    };
    let r = Member::open_with(&mut c, commit_first).await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::InvalidArgument));
    let r = Member::open(&mut c, join("bad/name", "t")).await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::InvalidArgument));
    let r = Member::open(&mut c, join("", "t")).await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::InvalidArgument));

    // A second JoinGroup on an open stream ends it.
    let mut m = Member::open(&mut c, join("g", "t")).await.unwrap();
    m.send(Req::Join(join("g", "t"))).await;
    assert_eq!(m.error().await.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn consume_of_an_unknown_topic_is_not_found() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    let r = Member::open(&mut c, join("g", "nope")).await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::NotFound));
}

#[tokio::test]
async fn a_second_stream_joining_with_the_same_member_id_fences_the_first_with_aborted() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    fill(&mut c, "t", 2, 0..10).await;

    let mut first = Member::open(&mut c, join("g", "t")).await.unwrap();
    first.wait_caught_up(10).await;
    first.commit_ok(0, 4).await;
    let same = JoinGroup {
        member_id: first.id.clone(),
        ..join("g", "t")
    };
    let mut second = Member::open(&mut c, same).await.unwrap();
    assert_eq!(first.error().await.code(), Code::Aborted);

    // The newer stream took over the member, with no rebalance, from the commits.
    assert_eq!(second.id, first.id);
    assert_eq!(second.generation, first.generation);
    assert_eq!(second.partitions, BTreeSet::from([0, 1]));
    second.wait_caught_up(10).await;
    assert_eq!(second.offsets(0), span(4..10));
    assert_eq!(second.offsets(1), span(0..10));
    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.topics[0].members.len(), 1, "{d:?}");
    assert!(d.topics[0].members[0].connected);
}

// ---------------------------------------------------------------------------------------
// Inspection
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn describe_group_shows_members_partitions_committed_offsets_and_lag_and_list_groups_lists_it()
 {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 4, FsyncPolicy::Always).await;
    create_topic(&mut c, "other", 1, FsyncPolicy::Always).await;
    fill(&mut c, "t", 4, 0..10).await;

    let mut a = Member::open(&mut c, join_with_timeout("g", "t", 30_000))
        .await
        .unwrap();
    let b = Member::open(&mut c, join_with_timeout("g", "t", 30_000))
        .await
        .unwrap();
    a.wait_generation_above(a.assignments[0].generation).await;
    a.wait_caught_up(10).await;
    let p = *a.partitions.first().expect("a owns partitions");
    a.commit_ok(p, 4).await;

    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.group, "g");
    assert_eq!(d.topics.len(), 1);
    let t = &d.topics[0];
    assert_eq!(t.topic, "t");
    assert_eq!(t.generation, b.generation);
    let mut want: Vec<(&str, Vec<u32>)> = vec![
        (&a.id, a.partitions.iter().copied().collect()),
        (&b.id, b.partitions.iter().copied().collect()),
    ];
    want.sort();
    let got: Vec<(&str, Vec<u32>)> = t
        .members
        .iter()
        .map(|m| (m.member_id.as_str(), m.partitions.clone()))
        .collect();
    assert_eq!(got, want, "members sorted by id, with their partitions");
    assert!(
        t.members
            .iter()
            .all(|m| m.connected && m.session_timeout_ms == 30_000)
    );
    assert_eq!(t.partitions.len(), 4);
    for po in &t.partitions {
        assert_eq!(po.end_offset, 10);
        if po.partition == p {
            assert_eq!((po.committed, po.lag), (Some(4), 6));
        } else {
            assert_eq!((po.committed, po.lag), (None, 10));
        }
    }
    // Without a topic: the same, since g committed on t.
    let all = describe_group(&mut c, "g", None).await;
    assert_eq!(all.topics, d.topics);

    let groups = list_groups(&mut c, "").await;
    assert_eq!(
        groups,
        [GroupSummary {
            group: "g".into(),
            topics: vec!["t".into()]
        }]
    );
    assert_eq!(list_groups(&mut c, "t").await, groups);
    assert!(list_groups(&mut c, "other").await.is_empty());

    // A dropped member shows as disconnected while it keeps its partitions.
    let id = b.id.clone();
    drop(b);
    wait_disconnected(&mut c, "g", "t", &id).await;
    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.topics[0].members.len(), 2);

    // A group the broker does not know: no topics, or the topic with nothing in it.
    assert!(
        describe_group(&mut c, "unknown", None)
            .await
            .topics
            .is_empty()
    );
    let d = describe_group(&mut c, "unknown", Some("t")).await;
    assert_eq!(d.topics.len(), 1);
    assert!(d.topics[0].members.is_empty());
    assert!(d.topics[0].partitions.iter().all(|p| p.committed.is_none()));
    let r = within(
        "DescribeGroup",
        c.describe_group(DescribeGroupRequest {
            group: "g".into(),
            topic: Some("nope".into()),
        }),
    )
    .await;
    assert_eq!(code(r), Code::NotFound);
}

#[tokio::test]
async fn describe_and_list_groups_show_a_group_that_has_members_but_no_commits() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;

    let m = Member::open(&mut c, join("g", "t")).await.unwrap();
    assert_eq!(
        list_groups(&mut c, "").await,
        [GroupSummary {
            group: "g".into(),
            topics: vec!["t".into()]
        }]
    );
    let d = describe_group(&mut c, "g", None).await;
    assert_eq!(
        d.topics.len(),
        1,
        "the topic g has a member on is missing: {d:?}"
    );
    assert_eq!(d.topics[0].members.len(), 1);
    assert_eq!(d.topics[0].members[0].member_id, m.id);
}

// ---------------------------------------------------------------------------------------
// Regressions
// ---------------------------------------------------------------------------------------

/// A rebalance that revokes a partition just as its owner's stream ends (here: the session
/// loop has exited, and waits for its in-flight commit before leaving) must still free the
/// partition for its new owner. The race needs many attempts; each is cheap when it passes.
/// Today `Coordinator::leave` only marks the stream's holdings disconnected, so a partition
/// outside the member's new target stays held by it: the new owner waits until the old
/// member's session expires or, since the old member reconnects here, forever.
#[tokio::test]
async fn a_partition_revoked_as_its_owner_s_stream_ends_still_reaches_its_new_owner() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    fill(&mut c, "t", 2, 0..10).await;
    for attempt in 0..60u64 {
        let group = format!("g{attempt}");
        let old = JoinGroup {
            member_id: format!("a{attempt}"),
            ..join_with_timeout(&group, "t", 120_000)
        };
        let mut a = Member::open(&mut c, old.clone()).await.unwrap();
        a.wait_caught_up(10).await;
        // Keep a commit of both partitions in flight (the last ones leave records to read).
        for i in 0..200u64 {
            a.commit((i % 2) as u32, i % 10).await;
        }
        let mut c2 = c.clone();
        let joining = join_with_timeout(&group, "t", 120_000);
        let b = tokio::spawn(async move { Member::open(&mut c2, joining).await.unwrap() });
        // a's stream ends around the moment b's join revokes one of its partitions.
        tokio::time::sleep(Duration::from_micros(300 * (attempt % 10))).await;
        drop(a);
        let mut b = b.await.expect("b joins");
        let moved = *b.partitions.first().expect("b owns a partition");
        // a comes back within its session timeout: no rebalance, and it keeps the other.
        wait_disconnected(&mut c, &group, "t", &old.member_id).await;
        let _a = Member::open(&mut c, old).await.unwrap();
        // Half of PATIENCE, so this fails with the group's state rather than in `pump`.
        let started = tokio::time::timeout(
            PATIENCE / 2,
            b.wait_until("the moved partition", |m| m.next.contains_key(&moved)),
        )
        .await;
        assert!(
            started.is_ok(),
            "attempt {attempt}: b owns partition {moved} but never got a record of it: {:?}",
            describe_group(&mut c, &group, Some("t")).await
        );
    }
}
