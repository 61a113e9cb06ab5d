//! Consumers as `futures::Stream`s: [`Reader`] (plain, from any position, over
//! `Subscribe`) and [`GroupConsumer`] (a consumer group member, over `Consume`). Both
//! reconnect after a broker restart or a network blip and resume without gaps: the reader
//! from the offset after the last record it delivered, the member from its group's
//! commits.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use spool_proto::v1::consume_request::Kind as Req;
use spool_proto::v1::consume_response::Kind as Resp;
use spool_proto::v1::start_position::Kind;
use spool_proto::v1::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tonic::Code;

use crate::client::Client;
use crate::error::{Error, Result};

/// A record as delivered to a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

impl Message {
    fn new(partition: u32, r: Record) -> Message {
        Message {
            partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        }
    }
}

/// Where a [`Reader`] starts in each partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Earliest,
    /// The end offset when the reader starts: only records appended after.
    Latest,
    Offset(u64),
    /// The first record at or after this time (milliseconds since the epoch).
    Timestamp(i64),
    /// A group's committed offsets (earliest where it has none).
    Committed(String),
}

/// A plain reader's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderOptions {
    pub start: Start,
    /// Partitions to read; `None` = all.
    pub partitions: Option<Vec<u32>>,
    /// Most records per stream message (0 = broker default).
    pub max_batch_records: u32,
    /// Messages buffered ahead of the caller.
    pub buffer: usize,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            start: Start::Earliest,
            partitions: None,
            max_batch_records: 0,
            buffer: 4096,
        }
    }
}

/// Reads a topic from a start position and then tails it, as a stream of [`Message`]s in
/// offset order per partition.
///
/// ```
/// # use futures::StreamExt;
/// # use spool_client::{Client, Reader, ReaderOptions, Start};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), spool_client::Error> {
/// # let broker = spool_broker::testing::TempBroker::start().await;
/// # let client = Client::connect(broker.endpoint()).await?;
/// # client.create_topic("events", 1, Default::default()).await?;
/// # let p = spool_client::Producer::new(&client, "events", Default::default()).await?;
/// # p.send(spool_client::ProducerRecord::new("hello")).await?;
/// let options = ReaderOptions { start: Start::Earliest, ..ReaderOptions::default() };
/// let mut reader = Reader::new(&client, "events", options).await?;
/// let first = reader.next().await.expect("the stream tails forever")?;
/// assert_eq!(first.value, "hello");
/// # Ok(()) }
/// ```
pub struct Reader {
    rx: mpsc::Receiver<Result<Message>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Reader {
    pub async fn new(client: &Client, topic: &str, options: ReaderOptions) -> Result<Reader> {
        let info = client.describe_topic(topic).await?;
        let partitions = options
            .partitions
            .clone()
            .unwrap_or_else(|| (0..info.partitions).collect());
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let mut tasks = Vec::new();
        for p in partitions {
            let pi = info
                .partition_info
                .iter()
                .find(|i| i.partition == p)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "partition {p} does not exist: the topic has partitions 0..{}",
                        info.partitions
                    ))
                })?;
            // Resolve "latest" now, so a reconnect before the first record cannot skip
            // records appended in between.
            let start = match &options.start {
                Start::Latest => Start::Offset(pi.end_offset),
                s => s.clone(),
            };
            tasks.push(tokio::spawn(read_partition(
                client.clone(),
                topic.to_string(),
                p,
                start,
                options.max_batch_records,
                tx.clone(),
            )));
        }
        Ok(Reader { rx, tasks })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Stream for Reader {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

fn start_position(start: &Start) -> (StartPosition, String) {
    let (kind, offset, ts, group) = match start {
        Start::Earliest => (Kind::Earliest, 0, 0, String::new()),
        Start::Latest => (Kind::Latest, 0, 0, String::new()),
        Start::Offset(o) => (Kind::Offset, *o, 0, String::new()),
        Start::Timestamp(t) => (Kind::Timestamp, 0, *t, String::new()),
        Start::Committed(g) => (Kind::Committed, 0, 0, g.clone()),
    };
    (
        StartPosition {
            kind: kind as i32,
            offset,
            timestamp_ms: ts,
        },
        group,
    )
}

async fn read_partition(
    client: Client,
    topic: String,
    partition: u32,
    mut start: Start,
    max_batch_records: u32,
    tx: mpsc::Sender<Result<Message>>,
) {
    let mut attempt = 0;
    loop {
        let (position, group) = start_position(&start);
        let req = SubscribeRequest {
            topic: topic.clone(),
            partitions: vec![partition],
            start: Some(position),
            group,
            max_batch_records,
        };
        let failure = match client.raw().subscribe(req).await {
            Err(status) => client.error(status),
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => {
                            attempt = 0;
                            for r in m.records {
                                start = Start::Offset(r.offset + 1);
                                if tx.send(Ok(Message::new(partition, r))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => {
                            break Error::Unreachable {
                                endpoint: client.endpoint().to_string(),
                                reason: "the broker closed the stream".into(),
                            };
                        }
                        Err(status) => break client.error(status),
                    }
                }
            }
        };
        if !failure.is_retriable() {
            let _ = tx.send(Err(failure)).await;
            return;
        }
        tracing::debug!(partition, error = %failure, "subscription lost; reconnecting");
        tokio::time::sleep(client.options().backoff.delay(attempt)).await;
        attempt += 1;
    }
}

/// A consumer group member's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOptions {
    /// Rejoin as this member (e.g. after a process restart); `None` = a new member.
    pub member_id: Option<String>,
    pub session_timeout: Duration,
    /// 0 = the broker's default.
    pub max_in_flight_records: u32,
    /// 0 = the broker's default.
    pub max_in_flight_bytes: u64,
    /// Commit automatically: a batch is committed once the caller asks for the record
    /// after its last one (so a crash re-delivers at most the batch being processed).
    pub auto_commit: bool,
    /// Messages buffered ahead of the caller.
    pub buffer: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            member_id: None,
            session_timeout: Duration::from_secs(10),
            max_in_flight_records: 0,
            max_in_flight_bytes: 0,
            auto_commit: false,
            buffer: 4096,
        }
    }
}

/// The member's current assignment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberState {
    pub member_id: String,
    pub generation: u64,
    pub partitions: Vec<u32>,
}

/// The most commits a member keeps waiting for the broker's answer; past it
/// [`GroupConsumer::commit`] fails with [`Error::TooManyPending`] instead of queueing, so a
/// caller that commits faster than the broker answers cannot grow the member's memory.
pub const MAX_PENDING_COMMITS: usize = 4096;

/// Room in the member's request channel beyond the commits: the join, a leave and an ack.
const REQUEST_SLACK: usize = 8;

enum Ctl {
    Commit {
        partition: u32,
        offset: u64,
        reply: oneshot::Sender<Result<()>>,
        /// One of [`MAX_PENDING_COMMITS`], held until the commit is answered.
        room: OwnedSemaphorePermit,
    },
    Leave(oneshot::Sender<()>),
}

/// An item travelling to the caller: a message plus the stream and batch it came in.
struct Delivered {
    message: Message,
    conn: u64,
    batch: u64,
}

/// A consumer group member: the broker assigns its partitions, and it resumes each from
/// the group's committed offset. Commit with [`GroupConsumer::commit`] after processing, or
/// set [`GroupOptions::auto_commit`].
///
/// ```
/// # use futures::StreamExt;
/// # use spool_client::{Client, GroupConsumer, GroupOptions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), spool_client::Error> {
/// # let broker = spool_broker::testing::TempBroker::start().await;
/// # let client = Client::connect(broker.endpoint()).await?;
/// # client.create_topic("jobs", 2, Default::default()).await?;
/// # let p = spool_client::Producer::new(&client, "jobs", Default::default()).await?;
/// # p.send(spool_client::ProducerRecord::new("job-1").partition(0)).await?;
/// let mut member = GroupConsumer::new(&client, "workers", "jobs", GroupOptions::default()).await?;
/// let job = member.next().await.expect("tails forever")?;
/// // ... process the job, then commit the next offset to read:
/// member.commit(job.partition, job.offset + 1).await?;
/// # Ok(()) }
/// ```
pub struct GroupConsumer {
    rx: mpsc::Receiver<Result<Delivered>>,
    ctl: mpsc::Sender<Ctl>,
    /// Room for unanswered commits (see [`MAX_PENDING_COMMITS`]).
    room: Arc<Semaphore>,
    /// The latest (stream, batch count) processed, for auto-commit: acks are cumulative,
    /// so one slot that the newest overwrites is all they need.
    acks: watch::Sender<(u64, u64)>,
    state: watch::Receiver<MemberState>,
    auto_commit: bool,
    last: Option<(u64, u64)>,
}

impl GroupConsumer {
    /// Joins `group` on `topic`.
    pub async fn new(
        client: &Client,
        group: &str,
        topic: &str,
        options: GroupOptions,
    ) -> Result<GroupConsumer> {
        client.describe_topic(topic).await?;
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let (ctl, ctl_rx) = mpsc::channel(MAX_PENDING_COMMITS + REQUEST_SLACK);
        let (acks, acks_rx) = watch::channel((0, 0));
        let (state_tx, state) = watch::channel(MemberState {
            member_id: options.member_id.clone().unwrap_or_default(),
            ..MemberState::default()
        });
        let auto_commit = options.auto_commit;
        let member = Member {
            client: client.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
            options,
            state: state_tx,
            tx,
        };
        tokio::spawn(member.run(ctl_rx, acks_rx));
        Ok(GroupConsumer {
            rx,
            ctl,
            room: Arc::new(Semaphore::new(MAX_PENDING_COMMITS)),
            acks,
            state,
            auto_commit,
            last: None,
        })
    }

    /// Leaves the group: the broker finishes commits already sent and hands this member's
    /// partitions to the others at once. (Dropping the consumer leaves too, without
    /// waiting.)
    pub async fn close(self) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Leave(done))
            .await
            .map_err(|_| Error::Closed)?;
        let _ = rx.await;
        Ok(())
    }

    /// A receiver of the member's assignment, updated after every rebalance.
    pub fn assignments(&self) -> watch::Receiver<MemberState> {
        self.state.clone()
    }

    /// Commits `offset` (the next offset to read) for a partition this member owns; the
    /// returned future resolves once it is durable. Refused if the partition moved to
    /// another member.
    ///
    /// The commit is on its way when this returns, before the future is polled: a caller
    /// may keep consuming while commits complete (they apply in the order made), which
    /// keeps the broker's in-flight credit from running out. At most
    /// [`MAX_PENDING_COMMITS`] wait for an answer at once: past that the commit fails with
    /// [`Error::TooManyPending`] (nothing is sent).
    pub fn commit(
        &self,
        partition: u32,
        offset: u64,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = match Arc::clone(&self.room).try_acquire_owned() {
            // With a permit there is always room in the channel: it holds more than there
            // are permits.
            Ok(room) => self
                .ctl
                .try_send(Ctl::Commit {
                    partition,
                    offset,
                    reply,
                    room,
                })
                .map_err(|_| Error::Closed),
            Err(TryAcquireError::NoPermits) => Err(Error::TooManyPending {
                limit: MAX_PENDING_COMMITS,
            }),
            Err(TryAcquireError::Closed) => Err(Error::Closed),
        };
        async move {
            sent?;
            rx.await.map_err(|_| Error::Closed)?
        }
    }

    /// The member id, generation and partitions of the latest assignment.
    pub fn state(&self) -> MemberState {
        self.state.borrow().clone()
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        let (done, _) = oneshot::channel();
        // If the channel is full, dropping the sender closes it: the member leaves once it
        // has sent what is queued.
        let _ = self.ctl.try_send(Ctl::Leave(done));
    }
}

impl Stream for GroupConsumer {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(d))) => {
                if self.auto_commit && self.last != Some((d.conn, d.batch)) {
                    // The caller moved on to a new batch: every earlier one is processed.
                    self.acks.send_replace((d.conn, d.batch));
                    self.last = Some((d.conn, d.batch));
                }
                Poll::Ready(Some(Ok(d.message)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct Member {
    client: Client,
    group: String,
    topic: String,
    options: GroupOptions,
    state: watch::Sender<MemberState>,
    tx: mpsc::Sender<Result<Delivered>>,
}

/// Commits sent and not yet answered, in the order they were made: after a reconnect they
/// go out again in that order, so the last commit of a partition is also the last applied
/// (resent in any other order, an older offset could overwrite a newer one that the broker
/// had already acknowledged).
#[derive(Default)]
struct Waiting(VecDeque<(u32, u64, oneshot::Sender<Result<()>>, OwnedSemaphorePermit)>);

impl Waiting {
    /// `room` is released when the commit is answered.
    fn push(
        &mut self,
        partition: u32,
        offset: u64,
        reply: oneshot::Sender<Result<()>>,
        room: OwnedSemaphorePermit,
    ) {
        self.0.push_back((partition, offset, reply, room));
    }

    /// Answers the oldest waiting commit of `offset` to `partition` (the broker answers a
    /// stream's commits in order).
    fn answer(&mut self, partition: u32, offset: u64, result: Result<()>) {
        if let Some(i) = self
            .0
            .iter()
            .position(|&(p, o, _, _)| p == partition && o == offset)
            && let Some((_, _, reply, _)) = self.0.remove(i)
        {
            let _ = reply.send(result);
        }
    }

    /// (partition, offset) of every waiting commit, oldest first.
    fn in_order(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|&(p, o, _, _)| (p, o))
    }

    fn fail_all(&mut self, e: &Error) {
        for (_, _, reply, _) in self.0.drain(..) {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

impl Member {
    async fn run(self, mut ctl: mpsc::Receiver<Ctl>, mut acks: watch::Receiver<(u64, u64)>) {
        let mut attempt = 0;
        let mut conn = 0u64;
        let mut waiting = Waiting::default();
        loop {
            conn += 1;
            let failure = self
                .session(conn, &mut ctl, &mut acks, &mut attempt, &mut waiting)
                .await;
            match failure {
                None => return,
                Some(e) if !e.is_retriable() || e.code() == Some(Code::Aborted) => {
                    waiting.fail_all(&e);
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
                Some(e) => {
                    tracing::debug!(group = %self.group, error = %e, "group stream lost; rejoining");
                    tokio::time::sleep(self.client.options().backoff.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One stream: join, deliver, commit. Returns why it ended (`None`: the caller left).
    async fn session(
        &self,
        conn: u64,
        ctl: &mut mpsc::Receiver<Ctl>,
        acks: &mut watch::Receiver<(u64, u64)>,
        attempt: &mut u32,
        waiting: &mut Waiting,
    ) -> Option<Error> {
        let member_id = self.state.borrow().member_id.clone();
        // Bounded: it holds at most the join, the waiting commits resent below, and one
        // request per control message, which is taken only while there is room (so the
        // sends below never fail for want of it, and never wait).
        let (req_tx, req_rx) = mpsc::channel(MAX_PENDING_COMMITS + REQUEST_SLACK);
        let join = ConsumeRequest {
            kind: Some(Req::Join(JoinGroup {
                group: self.group.clone(),
                topic: self.topic.clone(),
                member_id,
                session_timeout_ms: self.options.session_timeout.as_millis() as u32,
                max_in_flight_records: self.options.max_in_flight_records,
                max_in_flight_bytes: self.options.max_in_flight_bytes,
                auto_commit: self.options.auto_commit,
            })),
        };
        let _ = req_tx.try_send(join);
        // Commits that were in flight when the previous stream broke go out again.
        for (partition, offset) in waiting.in_order() {
            let _ = req_tx.try_send(ConsumeRequest {
                kind: Some(Req::Commit(CommitRequest { partition, offset })),
            });
        }
        let mut stream = match self
            .client
            .raw()
            .consume(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => return Some(self.client.error(status)),
        };
        let mut local: VecDeque<Delivered> = VecDeque::new();
        let mut batch = 0u64;
        let mut leaving: Option<oneshot::Sender<()>> = None;
        let mut acks_open = true;
        let failure = loop {
            let tx = self.tx.clone();
            tokio::select! {
                permit = tx.reserve(), if !local.is_empty() => match permit {
                    Ok(p) => p.send(Ok(local.pop_front().expect("non-empty"))),
                    Err(_) => return None,
                },
                // Always read: the broker's in-flight credit bounds what can pile up, and
                // commit answers must get through while the caller is behind.
                msg = stream.message() => match msg {
                    Ok(Some(m)) => {
                        *attempt = 0;
                        match m.kind {
                            Some(Resp::Assignment(a)) => {
                                self.state.send_replace(MemberState {
                                    member_id: a.member_id,
                                    generation: a.generation,
                                    partitions: a.partitions,
                                });
                            }
                            Some(Resp::Batch(b)) => {
                                for r in b.records {
                                    local.push_back(Delivered {
                                        message: Message::new(b.partition, r),
                                        conn,
                                        batch,
                                    });
                                }
                                batch += 1;
                            }
                            Some(Resp::CommitAck(a)) => {
                                let result = if a.rejected {
                                    Err(Error::CommitRejected { partition: a.partition, reason: a.reason })
                                } else {
                                    Ok(())
                                };
                                waiting.answer(a.partition, a.offset, result);
                            }
                            None => {}
                        }
                    }
                    Ok(None) if leaving.is_some() => {
                        if let Some(done) = leaving.take() {
                            let _ = done.send(());
                        }
                        return None;
                    }
                    Ok(None) => break Error::Unreachable {
                        endpoint: self.client.endpoint().to_string(),
                        reason: "the broker closed the stream".into(),
                    },
                    Err(status) => break self.client.error(status),
                },
                c = ctl.recv(), if leaving.is_none() && req_tx.capacity() > 0 => match c {
                    None => {
                        let _ = req_tx.try_send(ConsumeRequest { kind: Some(Req::Leave(LeaveGroup {})) });
                        let (done, _) = oneshot::channel();
                        leaving = Some(done);
                    }
                    Some(Ctl::Leave(done)) => {
                        let _ = req_tx.try_send(ConsumeRequest { kind: Some(Req::Leave(LeaveGroup {})) });
                        leaving = Some(done);
                    }
                    Some(Ctl::Commit { partition, offset, reply, room }) => {
                        waiting.push(partition, offset, reply, room);
                        let _ = req_tx.try_send(ConsumeRequest {
                            kind: Some(Req::Commit(CommitRequest { partition, offset })),
                        });
                    }
                },
                changed = acks.changed(), if acks_open && req_tx.capacity() > 0 => {
                    if changed.is_err() {
                        // The consumer is gone; its control channel closing ends the member.
                        acks_open = false;
                        continue;
                    }
                    let (c, batch_count) = *acks.borrow_and_update();
                    if c == conn {
                        let _ = req_tx.try_send(ConsumeRequest {
                            kind: Some(Req::Ack(Ack { batch_count })),
                        });
                    }
                }
            }
        };
        if let Some(done) = leaving {
            // Leaving and the stream broke: the broker's session timeout finishes the job.
            let _ = done.send(());
            return None;
        }
        Some(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_commits_are_resent_in_the_order_made_and_answered_oldest_first() {
        let mut w = Waiting::default();
        let mut replies = Vec::new();
        let room = Arc::new(Semaphore::new(4));
        for (p, o) in [(3, 150), (1, 7), (3, 163), (3, 150)] {
            let (tx, rx) = oneshot::channel();
            w.push(p, o, tx, Arc::clone(&room).try_acquire_owned().unwrap());
            replies.push(rx);
        }
        // A rewind (163, then 150 again) must reach the broker in that order too.
        assert_eq!(
            w.in_order().collect::<Vec<_>>(),
            vec![(3, 150), (1, 7), (3, 163), (3, 150)]
        );
        w.answer(3, 150, Ok(()));
        assert_eq!(
            w.in_order().collect::<Vec<_>>(),
            vec![(1, 7), (3, 163), (3, 150)],
            "an answer settles the oldest commit of that offset only"
        );
        assert_eq!(room.available_permits(), 1, "an answer gives its room back");
        let mut replies = replies.into_iter();
        assert!(matches!(replies.next().expect("first").await, Ok(Ok(()))));
        w.fail_all(&Error::Closed);
        for r in replies {
            assert!(matches!(r.await, Ok(Err(Error::Closed))));
        }
    }
}
