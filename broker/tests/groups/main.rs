//! End-to-end tests of consumer groups against a real `spoold`: `Consume` (assignment,
//! rebalancing, session timeouts, reconnects, fencing, stale commits, flow control,
//! auto-commit, broker restarts, at-least-once and exactly-once delivery over 100k records),
//! `ListGroups` and `DescribeGroup`.
//!
//! Every member is driven through [`Member`], which checks the stream's invariants on each
//! message it receives: the first message is an `Assignment`; generations only grow; a batch
//! only carries a partition of the member's current assignment, under its generation; and
//! within one ownership of a partition, batches follow each other with no gap and no repeat.
//!
//! Modules: `membership` (assignment, rebalances, session timeouts, reconnects, broker
//! restarts), `delivery` (100k records at least once and exactly once), `commits` (stale and
//! revoked commits, acks, auto-commit, flow control), `describe` (stream rules, fencing,
//! DescribeGroup and ListGroups, regressions).

mod altered;
mod commits;
#[path = "../common/mod.rs"]
mod common;
mod delivery;
mod describe;
mod membership;

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
