//! The bounds on a log's idempotent producer table: expiry after
//! `LogConfig::producer_expiration` without appends, `LogConfig::max_producers` per log, and
//! `StorageConfig::max_producers` across every log of the storage (least recently used
//! evicted first), so no client can grow broker memory or snapshots by inventing ids.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Log, Writer};

/// The broker's clock in milliseconds since the Unix epoch: the append time stored in every
/// batch header.
pub(super) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Log {
    /// Forgets producers that have not appended for the expiration time at `now_ms` (the
    /// broker calls it periodically; appends also expire lazily). Returns how many went.
    pub fn expire_producers(&self, now_ms: i64) -> usize {
        let mut w = self.writer.lock();
        let before = w.producers.len();
        self.bound_producers(&mut w, now_ms);
        before.saturating_sub(w.producers.len())
    }

    /// How many idempotent producers the log remembers.
    pub fn producer_count(&self) -> usize {
        self.writer.lock().producers.len()
    }

    /// Applies every bound to the table after it may have grown, and updates the storage's
    /// count. A log keeps at least the producer that just appended, so the storage-wide cap
    /// can be exceeded by at most one producer per log.
    pub(super) fn bound_producers(&self, w: &mut Writer, now_ms: i64) {
        if let Some(ttl) = self.config().producer_expiration {
            let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            w.producers.expire(now_ms, ttl);
        }
        while w.producers.len() > self.config().max_producers.max(1) && w.producers.forget_lru() {}
        let total = &self.shared.producers;
        while w.producers.len() > 1
            && total.load(Ordering::Relaxed) - w.counted_producers + w.producers.len()
                > self.shared.max_producers
        {
            w.producers.forget_lru();
        }
        self.count_producers(w);
    }

    /// Brings the storage-wide count in line with this log's table.
    pub(super) fn count_producers(&self, w: &mut Writer) {
        let (now, was) = (w.producers.len(), w.counted_producers);
        if now > was {
            self.shared
                .producers
                .fetch_add(now - was, Ordering::Relaxed);
        } else {
            self.shared
                .producers
                .fetch_sub(was - now, Ordering::Relaxed);
        }
        w.counted_producers = now;
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let w = self.writer.get_mut();
        self.shared
            .producers
            .fetch_sub(w.counted_producers, Ordering::Relaxed);
    }
}
