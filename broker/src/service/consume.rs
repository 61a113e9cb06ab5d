//! One `Consume` stream: a group member's session.
//!
//! A single task owns the member's state and reacts to four sources: commands from the
//! [`Coordinator`](crate::groups::Coordinator) (assignments, starts, fencing), the client's
//! requests (commits, acks), completed work (reads, waits for new data, commits) and room
//! in the outgoing queue. Delivery is credit-based: at most `max_in_flight_records` records
//! and `max_in_flight_bytes` bytes are delivered and not yet committed. Only one read runs
//! at a time and only one batch waits for the client, so a stalled member holds bounded
//! memory, and the task keeps handling revocations while the client is stalled.
//!
//! Revocation: on an `Assign` without a partition, the session forgets the partition's
//! state, drops its undelivered batch, queues the `Assignment`, waits for any commit of it
//! already in flight, then releases it to the coordinator; only then may another member
//! start it, from the committed offset.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::mailbox::Mailbox;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use spool_proto::v1::consume_request::Kind as Req;
use spool_proto::v1::consume_response::Kind as Resp;
use spool_proto::v1::{
    Assignment, CommitAck, ConsumeRequest, ConsumeResponse, JoinGroup, RecordBatch,
};
use spool_storage::StoredRecord;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::Inner;
use super::convert;
use crate::auth::{Operation, Principal, Resource};
use crate::error::{Error, Result};
use crate::groups::{Command, MAX_PENDING_COMMANDS};
use crate::quota::Direction;
use crate::registry::{Topic, validate_name};

/// Defaults and bounds of `JoinGroup` fields.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_IN_FLIGHT_RECORDS: u64 = 10_000;
const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 16 * 1024 * 1024;

/// Starts a session: the first request must be a `JoinGroup`.
pub async fn start(
    inner: Arc<Inner>,
    who: Principal,
    mut requests: Streaming<ConsumeRequest>,
) -> Result<ReceiverStream<Result<ConsumeResponse, Status>>, Status> {
    let first = requests
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the stream ended before a JoinGroup"))?;
    let Some(Req::Join(join)) = first.kind else {
        return Err(Status::invalid_argument(
            "the first message of a Consume stream must be a JoinGroup",
        ));
    };
    validate_name("group", &join.group)?;
    inner
        .auth
        .check(&who, Operation::Read, Resource::Topic(&join.topic))?;
    inner
        .auth
        .check(&who, Operation::Commit, Resource::Group(&join.group))?;
    let topic = inner.registry.get(&join.topic)?;
    let timeout = match join.session_timeout_ms {
        0 => DEFAULT_SESSION_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)).clamp(MIN_SESSION_TIMEOUT, MAX_SESSION_TIMEOUT),
    };
    let joined = inner.groups.join(
        &join.group,
        &topic.name,
        topic.partitions.len() as u32,
        &join.member_id,
        timeout,
    );
    let (tx, rx) = mpsc::channel(inner.config.stream_buffer);
    inner.metrics.active_subscriptions.inc();
    let session = Session::new(inner, who, topic, join, joined.member_id, joined.conn, tx);
    tokio::spawn(session.run(requests, joined.commands));
    Ok(ReceiverStream::new(rx))
}

/// A delivered batch not yet committed.
struct InFlight {
    end: u64,
    records: u64,
    bytes: u64,
}

enum PartState {
    Idle,
    Reading,
    Waiting,
}

struct Part {
    /// Distinguishes this start of the partition from earlier ones, whose work is ignored.
    token: u64,
    /// Where this assignment of the partition started (the committed offset then). A commit
    /// below it can only come from records delivered under an earlier assignment, after
    /// which another member may have committed further: it would move the offset back.
    from: u64,
    next: u64,
    state: PartState,
    in_flight: VecDeque<InFlight>,
    end: watch::Receiver<u64>,
}

enum Event {
    Read {
        partition: u32,
        token: u64,
        result: Result<Vec<StoredRecord>>,
    },
    Arrived {
        partition: u32,
        token: u64,
    },
    Committed {
        /// The offsets written: the latest queued commit of each partition.
        commits: Vec<(u32, u64)>,
        /// Every commit request this write answers, in the order they came (a partition's
        /// earlier commits, superseded by its latest before the write, included).
        answers: Vec<(u32, u64)>,
        result: Result<()>,
    },
}

/// A partition's commit waiting for the next write: the latest offset requested, and the
/// earlier requests it superseded (each still gets its own answer).
struct QueuedCommit {
    offset: u64,
    superseded: Vec<u64>,
}

impl QueuedCommit {
    /// Every request it stands for, oldest first.
    fn requests(&self) -> impl Iterator<Item = u64> + '_ {
        self.superseded
            .iter()
            .copied()
            .chain(std::iter::once(self.offset))
    }
}

/// The most answers a member may leave unread (queued responses plus commit answers owed)
/// before its stream stops reading requests: HTTP/2 flow control then holds the member's
/// further requests on its side, so a member that sends commits and never reads costs
/// bounded memory here.
pub const MAX_UNSENT_RESPONSES: usize = 1024;

struct Session {
    inner: Arc<Inner>,
    who: Principal,
    topic: Arc<Topic>,
    group: String,
    member_id: String,
    conn: u64,
    auto_commit: bool,
    max_records: u64,
    max_bytes: u64,
    generation: u64,
    target: BTreeSet<u32>,
    parts: BTreeMap<u32, Part>,
    next_token: u64,
    /// Messages for the client; holds at most one batch.
    outq: VecDeque<ConsumeResponse>,
    tx: mpsc::Sender<Result<ConsumeResponse, Status>>,
    work: FuturesUnordered<BoxFuture<'static, Event>>,
    reading: bool,
    /// Round-robin cursor over partitions for fairness.
    cursor: u32,
    /// (sequence number, partition, end offset) of delivered batches, for `Ack`.
    delivered: VecDeque<(u64, u32, u64)>,
    batches_sent: u64,
    commit_queue: BTreeMap<u32, QueuedCommit>,
    committing: Option<BTreeSet<u32>>,
    /// Commit requests in `commit_queue` and in the write in flight: answers owed.
    queued_answers: usize,
    answers_in_flight: usize,
    /// What this stream last added to the `consume_unsent_responses` gauge.
    reported_unsent: i64,
    /// Revoked partitions waiting for an in-flight commit before their release.
    release_after_commit: Vec<u32>,
    /// The member sent `LeaveGroup`.
    leaving: bool,
}

/// Tells the coordinator the stream ended, however the session task exits.
/// Takes a finished stream's share out of the `consume_unsent_responses` gauge.
struct UnsentGuard {
    inner: Arc<Inner>,
    reported: i64,
}

impl Drop for UnsentGuard {
    fn drop(&mut self) {
        self.inner
            .metrics
            .consume_unsent_responses
            .dec_by(self.reported);
    }
}

struct LeaveGuard {
    inner: Arc<Inner>,
    group: String,
    topic: String,
    member: String,
    conn: u64,
}

impl Drop for LeaveGuard {
    fn drop(&mut self) {
        self.inner.metrics.active_subscriptions.dec();
        self.inner
            .groups
            .leave(&self.group, &self.topic, &self.member, self.conn);
    }
}

impl Session {
    fn new(
        inner: Arc<Inner>,
        who: Principal,
        topic: Arc<Topic>,
        join: JoinGroup,
        member_id: String,
        conn: u64,
        tx: mpsc::Sender<Result<ConsumeResponse, Status>>,
    ) -> Session {
        Session {
            inner,
            who,
            topic,
            group: join.group,
            member_id,
            conn,
            auto_commit: join.auto_commit,
            max_records: match join.max_in_flight_records {
                0 => DEFAULT_MAX_IN_FLIGHT_RECORDS,
                n => u64::from(n),
            },
            max_bytes: match join.max_in_flight_bytes {
                0 => DEFAULT_MAX_IN_FLIGHT_BYTES,
                n => n,
            },
            generation: 0,
            target: BTreeSet::new(),
            parts: BTreeMap::new(),
            next_token: 0,
            outq: VecDeque::new(),
            tx,
            work: FuturesUnordered::new(),
            reading: false,
            cursor: 0,
            delivered: VecDeque::new(),
            batches_sent: 0,
            commit_queue: BTreeMap::new(),
            committing: None,
            queued_answers: 0,
            answers_in_flight: 0,
            reported_unsent: 0,
            release_after_commit: Vec::new(),
            leaving: false,
        }
    }

    async fn run(mut self, mut requests: Streaming<ConsumeRequest>, commands: Arc<Mailbox>) {
        let overflow = commands.overflow.clone();
        let _leave = LeaveGuard {
            inner: Arc::clone(&self.inner),
            group: self.group.clone(),
            topic: self.topic.name.clone(),
            member: self.member_id.clone(),
            conn: self.conn,
        };
        let ending = loop {
            self.schedule();
            self.report_unsent();
            let tx = self.tx.clone();
            let has_out = !self.outq.is_empty();
            let room = self.unsent() < MAX_UNSENT_RESPONSES;
            let step: Result<bool> = tokio::select! {
                biased;
                () = self.inner.shutdown.cancelled() => break Err(Error::ShuttingDown),
                () = overflow.cancelled() => break Err(Error::ResourceExhausted(format!(
                    "member {} fell behind: more than {} group commands were waiting for this stream; reconnect with the same member id to resume without a rebalance",
                    self.member_id, MAX_PENDING_COMMANDS
                ))),
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break Err(Error::ShuttingDown),
                },
                permit = tx.reserve(), if has_out => match permit {
                    Ok(permit) => {
                        if let Some(msg) = self.outq.pop_front() {
                            permit.send(Ok(msg));
                        }
                        Ok(true)
                    }
                    Err(_) => break Ok(()),
                },
                ev = self.work.next(), if !self.work.is_empty() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => Ok(true),
                },
                req = requests.next(), if room => match req {
                    Some(Ok(req)) => self.on_request(req),
                    Some(Err(status)) if status.code() == tonic::Code::Internal => {
                        break Err(Error::invalid(format!("malformed ConsumeRequest: {}", status.message())));
                    }
                    Some(Err(status)) => {
                        tracing::debug!(member = %self.member_id, %status, "consume stream broken");
                        break Ok(());
                    }
                    None => break Ok(()),
                },
            };
            match step {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let _unsent = UnsentGuard {
            inner: Arc::clone(&self.inner),
            reported: std::mem::take(&mut self.reported_unsent),
        };
        if let Err(e) = ending {
            let _ = self.tx.send(Err(Status::from(e))).await;
        }
        // Let a commit already in flight land before the partitions are handed over.
        while self.committing.is_some() {
            match self.work.next().await {
                Some(ev @ Event::Committed { .. }) => {
                    let _ = self.on_event(ev);
                    self.committing = None;
                }
                Some(_) => {}
                None => break,
            }
        }
        if self.leaving {
            // Flush the answers still queued (commit acks), then leave for good.
            while let Some(msg) = self.outq.pop_front() {
                if self.tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
            self.inner
                .groups
                .remove(&self.group, &self.topic.name, &self.member_id, self.conn);
        }
    }

    /// Answers this member has not read: queued responses and commit answers owed.
    fn unsent(&self) -> usize {
        self.outq.len() + self.queued_answers + self.answers_in_flight
    }

    fn report_unsent(&mut self) {
        let now = self.unsent() as i64;
        if now != self.reported_unsent {
            self.inner
                .metrics
                .consume_unsent_responses
                .inc_by(now - self.reported_unsent);
            self.reported_unsent = now;
        }
    }

    fn in_flight(&self) -> (u64, u64) {
        self.parts
            .values()
            .flat_map(|p| p.in_flight.iter())
            .fold((0, 0), |(r, b), f| (r + f.records, b + f.bytes))
    }

    /// Starts the next read if there is credit, no read running and no batch waiting.
    fn schedule(&mut self) {
        if self.reading
            || self
                .outq
                .iter()
                .any(|m| matches!(m.kind, Some(Resp::Batch(_))))
        {
            return;
        }
        let (records, bytes) = self.in_flight();
        if records >= self.max_records || bytes >= self.max_bytes {
            return;
        }
        let ids: Vec<u32> = self
            .parts
            .range(self.cursor..)
            .chain(self.parts.range(..self.cursor))
            .filter(|(_, p)| matches!(p.state, PartState::Idle))
            .map(|(id, _)| *id)
            .collect();
        let Some(&id) = ids.first() else { return };
        self.cursor = id + 1;
        let (max_records, _) = super::read::limits(&self.inner, 0, 0);
        let default_bytes = self.inner.config.stream_max_bytes.max(1) as usize;
        let max_records = (max_records as u64).min(self.max_records - records).max(1) as usize;
        let max_bytes = (default_bytes as u64).min(self.max_bytes - bytes).max(1) as usize;
        let part = self.parts.get_mut(&id).expect("listed above");
        part.state = PartState::Reading;
        self.reading = true;
        let (token, next) = (part.token, part.next);
        let inner = Arc::clone(&self.inner);
        let topic = Arc::clone(&self.topic);
        let who = self.who.clone();
        self.work.push(
            async move {
                let mut result = match topic.partition(id) {
                    Ok(p) => {
                        super::read::read_blocking(&inner, p, next, max_records, max_bytes).await
                    }
                    Err(e) => Err(e),
                };
                if let Ok(records) = &result {
                    let bytes = records.iter().map(|r| r.payload_len() as u64).sum();
                    if let Err(e) = super::throttle(&inner, &who, Direction::Consume, bytes).await {
                        result = Err(e);
                    }
                }
                Event::Read {
                    partition: id,
                    token,
                    result,
                }
            }
            .boxed(),
        );
    }

    fn on_command(&mut self, cmd: Command) -> Result<bool> {
        match cmd {
            Command::Assign {
                generation,
                partitions,
            } => {
                self.generation = generation;
                self.target = partitions.iter().copied().collect();
                let revoked: Vec<u32> = self
                    .parts
                    .keys()
                    .copied()
                    .filter(|p| !self.target.contains(p))
                    .collect();
                for p in &revoked {
                    self.parts.remove(p);
                    if let Some(queued) = self.commit_queue.remove(p) {
                        self.queued_answers -= queued.superseded.len() + 1;
                        for off in queued.requests() {
                            self.outq.push_back(reject(
                                *p,
                                off,
                                "the partition was revoked before the commit was applied",
                            ));
                        }
                    }
                }
                self.outq.retain(|m| match &m.kind {
                    Some(Resp::Batch(b)) => !revoked.contains(&b.partition),
                    _ => true,
                });
                self.delivered.retain(|(_, p, _)| !revoked.contains(p));
                self.outq.push_back(ConsumeResponse {
                    kind: Some(Resp::Assignment(Assignment {
                        member_id: self.member_id.clone(),
                        generation,
                        partitions,
                    })),
                });
                let (now, later): (Vec<u32>, Vec<u32>) = revoked
                    .into_iter()
                    .partition(|p| !self.committing.as_ref().is_some_and(|c| c.contains(p)));
                self.release_after_commit.extend(later);
                if !now.is_empty() {
                    self.release(&now);
                }
            }
            // A grant for a partition a newer (coalesced) `Assign` took away: hand it back.
            Command::Start { partition } if !self.target.contains(&partition) => {
                self.release(&[partition]);
            }
            Command::Start { partition } => {
                if !self.parts.contains_key(&partition) {
                    if partition as usize >= self.topic.partitions.len() {
                        // AlterTopic added it after this stream joined.
                        self.topic = self.inner.registry.get(&self.topic.name)?;
                    }
                    let p = self.topic.partition(partition)?;
                    let log = &p.log;
                    let start = log.start_offset();
                    let next = self
                        .inner
                        .offsets
                        .get_one(&self.group, &self.topic.name, partition)
                        .map_or(start, |c| c.clamp(start, log.end_offset()));
                    self.next_token += 1;
                    self.parts.insert(
                        partition,
                        Part {
                            token: self.next_token,
                            from: next,
                            next,
                            state: PartState::Idle,
                            in_flight: VecDeque::new(),
                            end: p.watch_end(),
                        },
                    );
                }
            }
            Command::Fenced => {
                return Err(Error::Aborted(format!(
                    "another Consume stream joined as member {}; this one is closed",
                    self.member_id
                )));
            }
            Command::TopicDeleted => return Err(Error::TopicNotFound(self.topic.name.clone())),
        }
        Ok(true)
    }

    fn release(&self, partitions: &[u32]) {
        self.inner.groups.release(
            &self.group,
            &self.topic.name,
            &self.member_id,
            self.conn,
            partitions,
        );
    }

    fn on_request(&mut self, req: ConsumeRequest) -> Result<bool> {
        match req.kind {
            None => return Err(Error::invalid("a ConsumeRequest must set `kind`")),
            Some(Req::Join(_)) => {
                return Err(Error::invalid(
                    "a Consume stream takes one JoinGroup, as its first message",
                ));
            }
            Some(Req::Commit(c)) => self.queue_commit(c.partition, c.offset),
            Some(Req::Leave(_)) => {
                self.leaving = true;
                return Ok(false);
            }
            Some(Req::Ack(a)) => {
                let mut upto: BTreeMap<u32, u64> = BTreeMap::new();
                while let Some(&(seq, p, end)) = self.delivered.front() {
                    if seq >= a.batch_count {
                        break;
                    }
                    self.delivered.pop_front();
                    upto.insert(p, end);
                }
                if self.auto_commit {
                    for (p, end) in upto {
                        self.queue_commit(p, end);
                    }
                }
            }
        }
        self.start_commit();
        Ok(true)
    }

    fn queue_commit(&mut self, partition: u32, offset: u64) {
        if !self.target.contains(&partition) {
            self.outq.push_back(reject(
                partition,
                offset,
                &format!(
                    "partition {partition} is not assigned to member {} in generation {}; the latest Assignment lists its partitions",
                    self.member_id, self.generation
                ),
            ));
            return;
        }
        if let Some(from) = self.parts.get(&partition).map(|p| p.from)
            && offset < from
        {
            self.outq.push_back(reject(
                partition,
                offset,
                &format!(
                    "offset {offset} is below {from}, where member {}'s assignment of partition {partition} in generation {} started: it comes from records delivered under an earlier assignment; commit offsets of records received since the latest Assignment",
                    self.member_id, self.generation
                ),
            ));
            return;
        }
        let end = self
            .topic
            .partition(partition)
            .map_or(0, |p| p.log.end_offset());
        if offset > end {
            self.outq.push_back(reject(
                partition,
                offset,
                &format!("offset {offset} is past the partition's end offset {end}"),
            ));
            return;
        }
        self.queued_answers += 1;
        match self.commit_queue.get_mut(&partition) {
            Some(queued) => {
                let earlier = std::mem::replace(&mut queued.offset, offset);
                queued.superseded.push(earlier);
            }
            None => {
                self.commit_queue.insert(
                    partition,
                    QueuedCommit {
                        offset,
                        superseded: Vec::new(),
                    },
                );
            }
        }
        self.start_commit();
    }

    /// Applies the queued commits as one durable append, one batch at a time.
    fn start_commit(&mut self) {
        if self.committing.is_some() || self.commit_queue.is_empty() {
            return;
        }
        let queue = std::mem::take(&mut self.commit_queue);
        let commits: Vec<(u32, u64)> = queue.iter().map(|(p, q)| (*p, q.offset)).collect();
        let answers: Vec<(u32, u64)> = queue
            .iter()
            .flat_map(|(p, q)| q.requests().map(move |o| (*p, o)))
            .collect();
        self.committing = Some(commits.iter().map(|(p, _)| *p).collect());
        self.answers_in_flight = answers.len();
        self.queued_answers = 0;
        let inner = Arc::clone(&self.inner);
        let group = self.group.clone();
        let topic = self.topic.name.clone();
        self.work.push(
            async move {
                let c = commits.clone();
                let result = tokio::task::spawn_blocking(move || {
                    inner.offsets.commit_many(&group, &topic, &c, "")
                })
                .await
                .map_err(Error::from)
                .and_then(|r| r);
                Event::Committed {
                    commits,
                    answers,
                    result,
                }
            }
            .boxed(),
        );
    }

    fn on_event(&mut self, ev: Event) -> Result<bool> {
        match ev {
            Event::Read {
                partition,
                token,
                result,
            } => {
                self.reading = false;
                let Some(part) = self.parts.get_mut(&partition).filter(|p| p.token == token) else {
                    return Ok(true);
                };
                let records = match result {
                    Ok(r) => r,
                    Err(Error::Storage(spool_storage::Error::OffsetOutOfRange {
                        start, ..
                    })) if part.next < start => {
                        // Retention removed records the group had not read: resume at the
                        // earliest record still kept.
                        tracing::warn!(group = %self.group, topic = %self.topic.name, partition, from = part.next, to = start, "committed offset fell below the log start; skipping ahead");
                        part.next = start;
                        part.state = PartState::Idle;
                        return Ok(true);
                    }
                    Err(e) => return Err(e),
                };
                if records.is_empty() {
                    if *part.end.borrow_and_update() > part.next {
                        part.state = PartState::Idle;
                    } else {
                        part.state = PartState::Waiting;
                        let mut end = part.end.clone();
                        self.work.push(
                            async move {
                                let _ = end.changed().await;
                                Event::Arrived { partition, token }
                            }
                            .boxed(),
                        );
                    }
                    return Ok(true);
                }
                part.state = PartState::Idle;
                let end = records.last().map_or(part.next, |r| r.offset + 1);
                part.next = end;
                let count = records.len() as u64;
                let (records, bytes) = convert::records_to_proto(records);
                part.in_flight.push_back(InFlight {
                    end,
                    records: count,
                    bytes,
                });
                self.inner.metrics.observe_read(&self.topic.name, bytes);
                let end_offset = self
                    .topic
                    .partition(partition)
                    .map_or(end, |p| p.log.end_offset());
                if self.auto_commit {
                    self.delivered
                        .push_back((self.batches_sent, partition, end));
                }
                self.batches_sent += 1;
                self.outq.push_back(ConsumeResponse {
                    kind: Some(Resp::Batch(RecordBatch {
                        partition,
                        generation: self.generation,
                        records,
                        end_offset,
                    })),
                });
            }
            Event::Arrived { partition, token } => {
                if let Some(part) = self.parts.get_mut(&partition).filter(|p| p.token == token) {
                    part.state = PartState::Idle;
                }
            }
            Event::Committed {
                commits,
                answers,
                result,
            } => {
                self.committing = None;
                self.answers_in_flight = 0;
                result?;
                for (p, offset) in commits {
                    if let Some(part) = self.parts.get_mut(&p) {
                        while part.in_flight.front().is_some_and(|f| f.end <= offset) {
                            part.in_flight.pop_front();
                        }
                        // A commit inside a batch frees the committed part of it.
                        if let Some(f) = part.in_flight.front_mut() {
                            let start = f.end - f.records;
                            if offset > start {
                                let left = f.end - offset;
                                f.bytes = f.bytes * left / f.records.max(1);
                                f.records = left;
                            }
                        }
                    }
                }
                for (partition, offset) in answers {
                    self.outq.push_back(ConsumeResponse {
                        kind: Some(Resp::CommitAck(CommitAck {
                            partition,
                            offset,
                            rejected: false,
                            reason: String::new(),
                        })),
                    });
                }
                let pending = std::mem::take(&mut self.release_after_commit);
                if !pending.is_empty() {
                    self.release(&pending);
                }
                self.start_commit();
            }
        }
        Ok(true)
    }
}

fn reject(partition: u32, offset: u64, reason: &str) -> ConsumeResponse {
    ConsumeResponse {
        kind: Some(Resp::CommitAck(CommitAck {
            partition,
            offset,
            rejected: true,
            reason: reason.to_string(),
        })),
    }
}
