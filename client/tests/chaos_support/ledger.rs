//! What the clients were told, kept by the harness: which records the producer handed
//! over and which it got acknowledged (and where), what the consumers received, and which
//! commits the broker acknowledged. The checks compare the broker's state with this.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use spool_client::{Delivery, Error, Message};

use super::value;

/// The shared record of every client-side outcome. A `std` mutex: nothing awaits while
/// holding it.
#[derive(Default)]
pub struct Ledger(Mutex<State>);

#[derive(Default)]
pub struct State {
    /// Ids `0..enqueued` were handed to the producer (counted before the hand-over, so a
    /// record can never be read back before it is counted).
    pub enqueued: u64,
    /// By id: where the producer's acknowledgement says the record landed.
    pub acked: Vec<Option<(u32, u64)>>,
    pub acked_count: u64,
    /// The highest id acknowledged so far.
    pub max_acked: Option<u64>,
    /// Records the producer failed (id, error). The producer promises to resend through
    /// restarts, so any is a bug; their outcome is unknown (stored once or not at all), so
    /// the run goes on and reports them at the end.
    pub producer_failed: Vec<(u64, String)>,
    /// By id: how many times a consumer received the record, and where.
    pub deliveries: Vec<u32>,
    pub seen_at: Vec<Option<(u32, u64)>>,
    pub consumed_unique: u64,
    pub deliveries_total: u64,
    /// Per member: messages received, and the highest id among them.
    pub received: Vec<u64>,
    pub max_received: Vec<Option<u64>>,
    /// Records delivered with a bad checksum (must stay empty).
    pub corrupt: Vec<String>,
    /// One record seen at two positions, or not where its acknowledgement said.
    pub misplaced: Vec<String>,
    pub consumer_errors: Vec<String>,
    /// Per partition: the highest offset whose `commit()` the broker acknowledged.
    pub acked_commits: BTreeMap<u32, u64>,
    pub commits_ok: u64,
    pub commits_rejected: u64,
}

fn slot<T: Default + Clone>(v: &mut Vec<T>, id: u64) -> &mut T {
    let i = id as usize;
    if v.len() <= i {
        v.resize(i + 1, T::default());
    }
    &mut v[i]
}

impl Ledger {
    pub fn new(members: usize) -> Ledger {
        Ledger(Mutex::new(State {
            received: vec![0; members],
            max_received: vec![None; members],
            ..State::default()
        }))
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().expect("ledger lock")
    }

    /// Counts record `id` as handed to the producer.
    pub fn enqueue(&self, id: u64) {
        let mut s = self.lock();
        s.enqueued = s.enqueued.max(id + 1);
    }

    pub fn on_ack(&self, id: u64, result: Result<Delivery, Error>) {
        let mut s = self.lock();
        match result {
            Ok(d) => {
                let at = (d.partition, d.offset);
                let seen = s.seen_at.get(id as usize).copied().flatten();
                if let Some(seen) = seen.filter(|&s| s != at) {
                    s.misplaced.push(format!(
                        "record {id} acknowledged at {at:?} but consumed at {seen:?}"
                    ));
                }
                let slot = slot(&mut s.acked, id);
                match *slot {
                    Some(prev) => {
                        let msg = format!("record {id} acknowledged twice: {prev:?} and {at:?}");
                        s.misplaced.push(msg);
                    }
                    None => {
                        *slot = Some(at);
                        s.acked_count += 1;
                        s.max_acked = s.max_acked.max(Some(id));
                    }
                }
            }
            Err(e) => {
                let code = e.code().map(|c| format!(" [{c:?}]")).unwrap_or_default();
                s.producer_failed.push((id, format!("{e}{code}")));
            }
        }
    }

    pub fn on_message(&self, member: usize, m: &Message) {
        let mut s = self.lock();
        s.received[member] += 1;
        s.deliveries_total += 1;
        let at = (m.partition, m.offset);
        let id = match value::decode(&m.value) {
            Ok(id) => id,
            Err(e) => {
                s.corrupt.push(format!(
                    "member {member} got partition {} offset {}: {e}",
                    at.0, at.1
                ));
                return;
            }
        };
        s.max_received[member] = s.max_received[member].max(Some(id));
        let n = slot(&mut s.deliveries, id);
        *n += 1;
        if *n == 1 {
            s.consumed_unique += 1;
        }
        let seen = slot(&mut s.seen_at, id);
        match *seen {
            None => *seen = Some(at),
            Some(prev) if prev != at => {
                let msg = format!("record {id} consumed at {prev:?} and at {at:?}: stored twice");
                s.misplaced.push(msg);
            }
            Some(_) => {}
        }
        if let Some(acked) = s.acked.get(id as usize).copied().flatten()
            && acked != at
        {
            let msg = format!("record {id} acknowledged at {acked:?} but consumed at {at:?}");
            s.misplaced.push(msg);
        }
    }

    pub fn on_commit(&self, partition: u32, offset: u64, result: Result<(), Error>) {
        let mut s = self.lock();
        match result {
            Ok(()) => {
                s.commits_ok += 1;
                let best = s.acked_commits.entry(partition).or_default();
                *best = (*best).max(offset);
            }
            Err(Error::CommitRejected { .. }) => s.commits_rejected += 1,
            Err(e) => s
                .consumer_errors
                .push(format!("commit of partition {partition} at {offset}: {e}")),
        }
    }

    pub fn consumer_error(&self, what: String) {
        self.lock().consumer_errors.push(what);
    }
}

impl State {
    /// Ids acknowledged so far.
    pub fn acked_ids(&self) -> Vec<u64> {
        (0..self.acked.len() as u64)
            .filter(|&id| self.acked[id as usize].is_some())
            .collect()
    }

    /// Whether the producer failed record `id`.
    pub fn failed(&self, id: u64) -> bool {
        self.producer_failed.iter().any(|&(f, _)| f == id)
    }

    /// Whether a consumer has received record `id`.
    pub fn consumed(&self, id: u64) -> bool {
        self.deliveries.get(id as usize).is_some_and(|&n| n > 0)
    }

    /// The failures no cycle may show, as lines for the failure message.
    pub fn faults(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut list = |what: &str, v: &[String]| {
            if !v.is_empty() {
                out.push(format!("{} {what}:", v.len()));
                out.extend(v.iter().take(10).map(|l| format!("  {l}")));
            }
        };
        list("corrupt records delivered", &self.corrupt);
        list("misplaced or duplicated records", &self.misplaced);
        list("consumer errors", &self.consumer_errors);
        out
    }
}
