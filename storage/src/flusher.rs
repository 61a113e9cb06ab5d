//! The background flusher behind [`crate::Durability::Interval`]: one thread per
//! [`crate::Storage`] that fdatasyncs each registered log once its interval has passed and
//! it holds unsynced appends.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::log::Log;

pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    logs: Vec<(Weak<Log>, Duration)>,
    stop: bool,
}

impl Flusher {
    pub fn start() -> std::io::Result<Flusher> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("spool-flusher".into())
            .spawn(move || run(&s))?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
    }

    pub fn register(&self, log: &Arc<Log>, every: Duration) {
        let mut st = self.shared.state.lock();
        let weak = Arc::downgrade(log);
        st.logs.retain(|(w, _)| !w.ptr_eq(&weak));
        st.logs.push((weak, every));
        self.shared.wake.notify_all();
    }

    /// Stops syncing `log` (its durability is no longer an interval).
    pub fn unregister(&self, log: &Arc<Log>) {
        let weak = Arc::downgrade(log);
        self.shared
            .state
            .lock()
            .logs
            .retain(|(w, _)| !w.ptr_eq(&weak));
    }
}

fn run(shared: &Shared) {
    let mut st = shared.state.lock();
    loop {
        if st.stop {
            return;
        }
        st.logs.retain(|(w, _)| w.strong_count() > 0);
        let tick = st
            .logs
            .iter()
            .map(|(_, d)| *d)
            .min()
            .unwrap_or(Duration::from_secs(3600));
        // Half the shortest interval keeps each log within its bound without busy-waking.
        let deadline = Instant::now() + (tick / 2).max(Duration::from_millis(1));
        shared.wake.wait_until(&mut st, deadline);
        if st.stop {
            return;
        }
        let due: Vec<Arc<Log>> = st
            .logs
            .iter()
            .filter_map(|(w, every)| w.upgrade().filter(|l| l.sync_due(*every)))
            .collect();
        drop(st);
        for log in due {
            if let Err(e) = log.sync() {
                tracing::error!(log = %log.name(), error = %e, "interval fsync failed");
            }
        }
        st = shared.state.lock();
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_all();
        // The flusher's own thread may hold the last reference to a log, and through it
        // to this: it then ends by itself once it sees `stop`, and must not join itself.
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}
