//! Fault injection for tests (cargo feature `fault-injection`): makes the next file
//! operations of a kind on files under a directory fail with a chosen OS error, or stall
//! their thread like a slow disk, so tests can prove what happens on a full disk, a failing
//! fsync or a stalled write without a real broken disk.
//! Without the feature every check compiles to nothing.

use std::io;
use std::path::Path;

/// The file operations that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reserving space (`fallocate`).
    Allocate,
    /// Writing a batch.
    Write,
    /// `fdatasync` of a segment.
    Sync,
    /// Opening a closed segment's file to sync it (e.g. `EMFILE`).
    Open,
    /// Removing a file (retention, truncation, leftovers).
    Remove,
    /// Renaming a file into place (compaction's swap of a cleaned segment and its indexes).
    Rename,
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::path::PathBuf;
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;

    struct Rule {
        dir: PathBuf,
        op: Op,
        /// Failures left; `u64::MAX` = until cleared.
        times: u64,
        effect: Effect,
    }

    #[derive(Clone, Copy)]
    enum Effect {
        /// Fail with this OS error.
        Fail(i32),
        /// Succeed after blocking the calling thread this long (a slow disk).
        Stall(Duration),
    }

    static RULES: Mutex<Vec<Rule>> = Mutex::new(Vec::new());
    /// Threads inside a stall right now.
    static STALLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// How many threads are blocked in a [`stall`] right now, so a test can wait until the
    /// operation it stalled has begun.
    pub fn stalled() -> usize {
        STALLED.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fails the next `times` operations `op` on files under `dir` with OS error `errno`
    /// (e.g. 28, ENOSPC); `u64::MAX` fails them until [`clear`].
    pub fn fail(dir: &Path, op: Op, times: u64, errno: i32) {
        RULES.lock().push(Rule {
            dir: dir.to_path_buf(),
            op,
            times,
            effect: Effect::Fail(errno),
        });
    }

    /// Makes the next `times` operations `op` on files under `dir` block their thread for
    /// `delay` before going ahead, like a stalled disk.
    pub fn stall(dir: &Path, op: Op, times: u64, delay: Duration) {
        RULES.lock().push(Rule {
            dir: dir.to_path_buf(),
            op,
            times,
            effect: Effect::Stall(delay),
        });
    }

    /// Removes every rule for files under `dir`.
    pub fn clear(dir: &Path) {
        RULES
            .lock()
            .retain(|r| !r.dir.starts_with(dir) && !dir.starts_with(&r.dir));
    }

    pub(crate) fn check(op: Op, path: &Path) -> io::Result<()> {
        let mut rules = RULES.lock();
        let Some(i) = rules
            .iter()
            .position(|r| r.op == op && path.starts_with(&r.dir) && r.times > 0)
        else {
            return Ok(());
        };
        let effect = rules[i].effect;
        if rules[i].times != u64::MAX {
            rules[i].times -= 1;
        }
        rules.retain(|r| r.times > 0);
        drop(rules);
        match effect {
            Effect::Fail(errno) => Err(io::Error::from_raw_os_error(errno)),
            Effect::Stall(delay) => {
                STALLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(delay);
                STALLED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::{clear, fail, stall, stalled};

#[cfg(feature = "fault-injection")]
pub(crate) use imp::check;

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn check(_op: Op, _path: &Path) -> io::Result<()> {
    Ok(())
}
