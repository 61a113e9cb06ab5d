//! The queue of commands from the group coordinator to one member's stream. Commands are
//! sent under the coordinator's lock, so sending never waits; none may be lost (a lost
//! `Start` would stall a partition). What keeps it bounded without dropping anything is
//! coalescing: only the newest `Assign` matters (it replaces a queued one in place), and a
//! partition is granted (`Start`) to a stream at most once until the stream releases it, so
//! a stream that reads nothing holds at most one `Assign`, one `Start` per partition and a
//! final `Fenced` or `TopicDeleted`. Past `cap` (a safety net) the stream is told to end.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::groups::Command;

pub struct Mailbox {
    state: Mutex<State>,
    notify: Notify,
    cap: usize,
    /// Cancelled when the queue passed `cap`: the stream must end.
    pub overflow: CancellationToken,
}

struct State {
    queue: VecDeque<Command>,
    /// The coordinator dropped its end: nothing more will come.
    closed: bool,
}

impl Mailbox {
    pub fn new(cap: usize) -> Mailbox {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            notify: Notify::new(),
            cap,
            overflow: CancellationToken::new(),
        }
    }

    /// Queues `cmd`, an `Assign` in place of one still queued.
    pub fn tell(&self, cmd: Command) {
        let mut st = self.state.lock();
        let is_assign = |c: &Command| matches!(c, Command::Assign { .. });
        let queued_assign = if is_assign(&cmd) {
            st.queue.iter_mut().find(|c| is_assign(c))
        } else {
            None
        };
        match queued_assign {
            Some(slot) => *slot = cmd,
            None => st.queue.push_back(cmd),
        }
        if st.queue.len() > self.cap {
            self.overflow.cancel();
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Marks the sending end gone: `recv` answers `None` once the queue is empty.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_one();
    }

    /// The next command, `None` once closed and empty.
    pub async fn recv(&self) -> Option<Command> {
        loop {
            {
                let mut st = self.state.lock();
                if let Some(cmd) = st.queue.pop_front() {
                    return Some(cmd);
                }
                if st.closed {
                    return None;
                }
            }
            // A `tell` between the check and here leaves a permit: this returns at once.
            self.notify.notified().await;
        }
    }

    /// The next command if one is queued.
    pub fn try_recv(&self) -> Option<Command> {
        self.state.lock().queue.pop_front()
    }

    /// Commands queued.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
