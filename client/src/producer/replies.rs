//! How acknowledgements get back to callers.
//!
//! A record handed over alone gets its own one-shot reply. The records of one
//! [`super::Producer::enqueue_batch`] call share one [`Slots`] and travel through the
//! producer as *runs* (consecutive records of one call), so answering a broker batch of a
//! thousand records is one lock and one wake-up, not a thousand.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::Delivery;
use crate::error::{Error, Result};

/// A record accepted by the producer, resolving once the broker acknowledged it.
pub struct PendingDelivery(pub(super) oneshot::Receiver<Result<Delivery>>);

impl Future for PendingDelivery {
    type Output = Result<Delivery>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

/// The records of one [`super::Producer::enqueue_batch`] call, resolving once every one
/// of them is answered: their deliveries in the order given, or the first error.
///
/// On an error some of the records may still have been stored (those the broker
/// acknowledged before it, or whose outcome a dropped connection left unknown).
pub struct PendingBatch(pub(super) oneshot::Receiver<Result<Vec<Delivery>>>);

impl Future for PendingBatch {
    type Output = Result<Vec<Delivery>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

impl PendingBatch {
    /// A batch answered already (an empty call).
    pub(super) fn ready(result: Result<Vec<Delivery>>) -> PendingBatch {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(result);
        PendingBatch(rx)
    }
}

/// The answers of one batch call, filled run by run.
pub(super) struct Slots(Mutex<SlotsState>);

struct SlotsState {
    deliveries: Vec<Delivery>,
    error: Option<Error>,
    remaining: usize,
    done: Option<oneshot::Sender<Result<Vec<Delivery>>>>,
}

impl Slots {
    /// Slots for `n` records (n > 0) and the future that resolves when all are answered.
    pub(super) fn new(n: usize) -> (Arc<Slots>, PendingBatch) {
        let (tx, rx) = oneshot::channel();
        let placeholder = Delivery {
            partition: 0,
            offset: 0,
        };
        let slots = Slots(Mutex::new(SlotsState {
            deliveries: vec![placeholder; n],
            error: None,
            remaining: n,
            done: Some(tx),
        }));
        (Arc::new(slots), PendingBatch(rx))
    }

    fn answer(&self, start: usize, len: usize, outcome: std::result::Result<Delivery, &Error>) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(first) => {
                for (i, d) in s.deliveries[start..start + len].iter_mut().enumerate() {
                    *d = Delivery {
                        partition: first.partition,
                        offset: first.offset + i as u64,
                    };
                }
            }
            Err(e) => {
                s.error.get_or_insert_with(|| e.clone());
            }
        }
        s.remaining -= len;
        if s.remaining == 0
            && let Some(done) = s.done.take()
        {
            let result = match s.error.take() {
                Some(e) => Err(e),
                None => Ok(std::mem::take(&mut s.deliveries)),
            };
            let _ = done.send(result);
        }
    }
}

/// Who waits for some consecutive records of one partition's queue.
pub(super) enum Reply {
    One(oneshot::Sender<Result<Delivery>>),
    /// Records `start..start + len` of a batch call.
    Run {
        slots: Arc<Slots>,
        start: usize,
        len: usize,
    },
}

impl Reply {
    fn len(&self) -> usize {
        match self {
            Reply::One(_) => 1,
            Reply::Run { len, .. } => *len,
        }
    }

    /// Answers these records: stored at consecutive offsets from `first`.
    pub(super) fn deliver(self, first: Delivery) {
        match self {
            Reply::One(tx) => {
                let _ = tx.send(Ok(first));
            }
            Reply::Run { slots, start, len } => slots.answer(start, len, Ok(first)),
        }
    }

    pub(super) fn fail(self, e: &Error) {
        match self {
            Reply::One(tx) => {
                let _ = tx.send(Err(e.clone()));
            }
            Reply::Run { slots, start, len } => slots.answer(start, len, Err(e)),
        }
    }
}

/// A queue of replies in record order, runs of one call merged.
#[derive(Default)]
pub(super) struct Replies {
    runs: VecDeque<Reply>,
}

impl Replies {
    pub(super) fn push(&mut self, reply: Reply) {
        if let (
            Some(Reply::Run {
                slots: last,
                start: last_start,
                len: last_len,
            }),
            Reply::Run { slots, start, len },
        ) = (self.runs.back_mut(), &reply)
            && Arc::ptr_eq(last, slots)
            && *last_start + *last_len == *start
        {
            *last_len += len;
            return;
        }
        self.runs.push_back(reply);
    }

    /// Removes the replies of the first `n` records.
    pub(super) fn take_front(&mut self, mut n: usize) -> Vec<Reply> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(front) = self.runs.front_mut() else {
                break;
            };
            let len = front.len();
            if len <= n {
                n -= len;
                out.push(self.runs.pop_front().expect("front exists"));
                continue;
            }
            // Split a run: the first n of its records go, the rest stay.
            let Reply::Run { slots, start, len } = front else {
                unreachable!("a one-record reply is never longer than n > 0");
            };
            out.push(Reply::Run {
                slots: Arc::clone(slots),
                start: *start,
                len: n,
            });
            *start += n;
            *len -= n;
            n = 0;
        }
        out
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = Reply> + '_ {
        self.runs.drain(..)
    }
}

/// Answers `replies` (in record order) as stored from offset `base` of `partition`.
pub(super) fn deliver_all(replies: Vec<Reply>, partition: u32, base: u64) {
    let mut offset = base;
    for r in replies {
        let len = r.len() as u64;
        r.deliver(Delivery { partition, offset });
        offset += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(slots: &Arc<Slots>, start: usize, len: usize) -> Reply {
        Reply::Run {
            slots: Arc::clone(slots),
            start,
            len,
        }
    }

    #[tokio::test]
    async fn runs_split_across_broker_batches_resolve_in_call_order() {
        let (slots, pending) = Slots::new(5);
        let mut q = Replies::default();
        for i in 0..5 {
            q.push(run(&slots, i, 1));
        }
        assert_eq!(
            q.runs.len(),
            1,
            "consecutive records of one call merge into one run"
        );
        let first = q.take_front(2);
        let second = q.take_front(3);
        // The later broker batch is answered first: slots still land in call order.
        deliver_all(second, 4, 100);
        deliver_all(first, 3, 7);
        let got = pending.await.expect("all delivered");
        let want: Vec<(u32, u64)> = vec![(3, 7), (3, 8), (4, 100), (4, 101), (4, 102)];
        assert_eq!(
            got.iter()
                .map(|d| (d.partition, d.offset))
                .collect::<Vec<_>>(),
            want
        );
    }

    #[tokio::test]
    async fn a_failed_run_fails_the_call_once_every_record_is_answered() {
        let (slots, mut pending) = Slots::new(3);
        let mut q = Replies::default();
        q.push(run(&slots, 0, 3));
        let mut parts = q.take_front(1);
        parts.extend(q.take_front(2));
        let mut parts = parts.into_iter();
        parts.next().expect("first").fail(&Error::Closed);
        assert!(
            futures::poll!(&mut pending).is_pending(),
            "resolves only when every record is answered"
        );
        parts.next().expect("rest").deliver(Delivery {
            partition: 0,
            offset: 1,
        });
        assert!(matches!(pending.await, Err(Error::Closed)));
    }

    #[test]
    fn runs_of_different_calls_or_with_gaps_stay_apart() {
        let (a, _pa) = Slots::new(4);
        let (b, _pb) = Slots::new(1);
        let mut q = Replies::default();
        q.push(run(&a, 0, 1));
        q.push(run(&b, 0, 1));
        q.push(run(&a, 1, 1));
        q.push(run(&a, 3, 1));
        assert_eq!(q.runs.len(), 4);
        assert_eq!(q.take_front(4).len(), 4);
    }
}
