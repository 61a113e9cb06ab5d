//! One partition's queue state: which records are settled, leased, or waiting for a time.
//! Pure (no I/O, the clock passed in), so the rules are tested here and replay applies the
//! same transitions as live requests.
//!
//! Offsets below `floor` are settled. Above it, settled offsets are kept as ranges (an
//! acked run costs one entry however long), and every record the queue has touched and not
//! settled is an [`Entry`]. Offsets in `[floor, scan)` are all either settled or entries,
//! so a record at or past `scan` that is neither is fresh: never leased, available at its
//! delivery time. Memory is bounded by the entries (at most `2 × max_leased`: leased ones
//! plus those waiting) and the deferred set, since each gap between settled ranges holds
//! at least one of either.
//!
//! A fresh record whose delivery time is far off is *deferred*: its timer goes to the delay
//! store on disk (`delays.rs`) and its offset joins both `deferred` (a compressed bitmap,
//! a bit or two per record) and the settled ranges, so the scan and the floor pass over it
//! and later records flow. When its timer comes due it is taken out of both and becomes an
//! entry waiting for its time. A settled range may therefore hold deferred offsets: an
//! offset is settled when it is in a range and not deferred.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use roaring::RoaringTreemap;

mod gaps;

/// A touched, unsettled record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Leases granted so far (1 after the first delivery; 0 for a fresh record waiting
    /// for its delivery time).
    pub attempt: u32,
    pub state: State,
    /// The record's key hash when the queue orders by key and the key is not empty.
    pub key: Option<u64>,
    /// For a record a redrive brought back: the dead-letter offset it came from, plus one
    /// (0 for every other). It salts the record's lease ids, so a lease of its life before
    /// the dead letter never matches one of this life, although attempts start again.
    pub life: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Available from `at_ms`: a retry's backoff, a nack's delay, a delivery time.
    Waiting { at_ms: i64 },
    /// Leased until `expires_ms` (a lease that ran out stays here until the next look:
    /// what follows it is computed from the expiry, so no timer is needed).
    Leased {
        expires_ms: i64,
        lease_ms: u32,
        consumer: Arc<str>,
    },
    /// A fresh record behind an unsettled earlier record of its key (key ordering),
    /// available from `at_ms` once it heads its key. Not persisted: a scan finds it again.
    Blocked { at_ms: i64 },
    /// To be dead-lettered (the intent is durable); settled once the dead letter is.
    /// `dlq_from`: the dead-letter topic's end offset when the intent was written, where a
    /// search for a copy written before a crash starts.
    DeadLettering { reason: String, dlq_from: u64 },
}

/// What a lease's end leads to, for a record whose lease ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterLease {
    /// Available again at this time.
    RetryAt(i64),
    /// Its last allowed attempt ended: dead-letter it.
    DeadLetter,
}

/// How a settlement's lease id relates to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseCheck {
    /// The record's current lease, still running.
    Active,
    /// A lease of this record that ended unsettled (expired, or an earlier attempt's).
    Ended,
    /// No such lease on an unsettled record.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Partition {
    floor: u64,
    /// Settled ranges at or above `floor`: start → end (exclusive), disjoint, not touching.
    settled: BTreeMap<u64, u64>,
    entries: BTreeMap<u64, Entry>,
    scan: u64,
    leased: usize,
    /// Key ordering: the oldest unsettled tracked record of each key (it alone may be
    /// leased), and the records waiting behind it.
    heads: HashMap<u64, u64>,
    blocked: HashMap<u64, BTreeSet<u64>>,
    /// Deferred offsets (also inside settled ranges), whose timers are in the delay store.
    deferred: RoaringTreemap,
}

impl Partition {
    /// A partition whose records from `start` on belong to the queue.
    pub fn new(start: u64) -> Partition {
        Partition {
            floor: start,
            scan: start,
            ..Partition::default()
        }
    }

    /// Every offset below this is settled or deferred (the floor a checkpoint records).
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Every offset below this is settled (what `DescribeQueue` reports).
    pub fn ack_floor(&self) -> u64 {
        self.deferred
            .min()
            .map_or(self.floor, |d| d.min(self.floor))
    }

    /// Records deferred to the delay store.
    pub fn deferred(&self) -> u64 {
        self.deferred.len()
    }

    /// Whether `offset` is deferred: a timer in the delay store stands for it.
    pub fn is_deferred(&self, offset: u64) -> bool {
        self.deferred.contains(offset)
    }

    /// What the deferred set costs in memory, about (its serialized size).
    pub fn deferred_bytes(&self) -> usize {
        if self.deferred.is_empty() {
            0
        } else {
            self.deferred.serialized_size()
        }
    }

    /// Where a scan for fresh records resumes.
    pub fn scan(&self) -> u64 {
        self.scan
    }

    pub fn leased(&self) -> usize {
        self.leased
    }

    pub fn entries(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.entries.iter().map(|(o, e)| (*o, e))
    }

    pub fn entry(&self, offset: u64) -> Option<&Entry> {
        self.entries.get(&offset)
    }

    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    pub fn is_settled(&self, offset: u64) -> bool {
        self.in_ranges(offset) && !self.deferred.contains(offset)
    }

    /// Below the floor or in a settled range: settled or deferred.
    fn in_ranges(&self, offset: u64) -> bool {
        offset < self.floor
            || self
                .settled
                .range(..=offset)
                .next_back()
                .is_some_and(|(_, end)| offset < *end)
    }

    /// Settled or deferred offsets in `[floor, end)`.
    pub fn settled_below(&self, end: u64) -> u64 {
        self.settled
            .iter()
            .take_while(|(s, _)| **s < end)
            .map(|(s, e)| (*e).min(end) - s)
            .sum()
    }

    /// Whether `offset` is neither settled nor tracked: a fresh record.
    pub fn is_fresh(&self, offset: u64) -> bool {
        !self.in_ranges(offset) && !self.entries.contains_key(&offset)
    }

    /// Defers a fresh record: its timer is (being made) durable in the delay store.
    pub fn defer(&mut self, offset: u64) {
        debug_assert!(self.is_fresh(offset));
        self.deferred.insert(offset);
        self.add_range(offset);
    }

    /// A deferred record's timer came due: it becomes a fresh record waiting for `at_ms`
    /// (or for its key). False (and nothing changes) when it is not deferred any more: a
    /// timer written twice, or one whose record retention removed.
    pub fn undefer(&mut self, offset: u64, at_ms: i64) -> bool {
        if !self.deferred.contains(offset) {
            return false;
        }
        self.track_fresh(offset, State::Waiting { at_ms }, None);
        true
    }

    /// Restores deferred offsets from a checkpoint (its ranges already hold them).
    pub fn restore_deferred(&mut self, deferred: RoaringTreemap) {
        self.deferred |= deferred;
    }

    /// The deferred offsets, in order (for a checkpoint).
    pub fn deferred_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.deferred.iter()
    }

    /// Moves the scan past a settled range it stands in (deferred runs are ranges too, so
    /// a restart's scan passes millions of deferred records at once) and returns it.
    pub fn skip_settled(&mut self) -> u64 {
        self.scan = self.past_range(self.scan);
        self.scan
    }

    /// `offset`, or the end of the settled range it stands in.
    fn past_range(&self, offset: u64) -> u64 {
        match self.settled.range(..=offset).next_back() {
            Some((_, &end)) if offset < end => end,
            _ => offset,
        }
    }

    /// The first fresh record below `end`, looking at most 1,000 offsets past the settled
    /// runs after the scan (entries restored by a restart may sit there).
    pub fn first_fresh(&self, end: u64) -> Option<u64> {
        let mut o = self.scan;
        for _ in 0..1_000 {
            o = self.past_range(o);
            if o >= end {
                return None;
            }
            if !self.entries.contains_key(&o) && !self.in_ranges(o) {
                return Some(o);
            }
            o += 1;
        }
        None
    }

    /// The scan has looked at everything below `offset`.
    pub fn scanned_to(&mut self, offset: u64) {
        self.scan = self.scan.max(offset);
    }

    /// Whether a fresh record of `key` must wait behind an earlier one.
    pub fn key_is_held(&self, key: Option<u64>) -> bool {
        key.is_some_and(|k| self.heads.contains_key(&k))
    }

    /// Keys with records waiting behind their head.
    pub fn blocked_keys(&self) -> usize {
        self.blocked.len()
    }

    /// Starts tracking a fresh record that is not due yet (`Waiting`) or waits for its key
    /// (`Blocked`).
    pub fn track_fresh(&mut self, offset: u64, state: State, key: Option<u64>) {
        self.set(
            offset,
            Entry {
                attempt: 0,
                state,
                key,
                life: 0,
            },
        );
    }

    /// Leases `offset` (fresh or tracked) and returns its attempt number.
    pub fn grant(
        &mut self,
        offset: u64,
        expires_ms: i64,
        lease_ms: u32,
        consumer: Arc<str>,
        key: Option<u64>,
    ) -> u32 {
        let (attempt, key, life) = self
            .entries
            .get(&offset)
            .map_or((0, key, 0), |e| (e.attempt, e.key, e.life));
        self.set(
            offset,
            Entry {
                attempt: attempt + 1,
                state: State::Leased {
                    expires_ms,
                    lease_ms,
                    consumer,
                },
                key,
                life,
            },
        );
        attempt + 1
    }

    /// Replaces a tracked record's state, keeping its attempt count and key.
    pub fn set_state(&mut self, offset: u64, state: State) {
        if let Some(e) = self.entries.get(&offset) {
            let (attempt, key, life) = (e.attempt, e.key, e.life);
            self.set(
                offset,
                Entry {
                    attempt,
                    state,
                    key,
                    life,
                },
            );
        }
    }

    /// Sets a record's entry as replay found it (a lease grant of a known attempt). A
    /// lease event does not repeat the record's life: an entry of 0 keeps the one tracked.
    pub fn restore(&mut self, offset: u64, mut entry: Entry) {
        if !self.is_settled(offset) {
            if entry.life == 0 {
                entry.life = self.entries.get(&offset).map_or(0, |e| e.life);
            }
            self.set(offset, entry);
        }
    }

    fn set(&mut self, offset: u64, entry: Entry) {
        if self.deferred.remove(offset) {
            self.unrange(offset);
        }
        if let Some(k) = entry.key {
            if matches!(entry.state, State::Blocked { .. }) {
                self.blocked.entry(k).or_default().insert(offset);
            } else {
                self.unblock(k, offset);
                let head = self.heads.entry(k).or_insert(offset);
                *head = (*head).min(offset);
            }
        }
        let was = self.entries.insert(offset, entry.clone());
        if matches!(was.map(|e| e.state), Some(State::Leased { .. })) {
            self.leased -= 1;
        }
        if matches!(entry.state, State::Leased { .. }) {
            self.leased += 1;
        }
    }

    fn unblock(&mut self, key: u64, offset: u64) {
        if let Some(set) = self.blocked.get_mut(&key) {
            set.remove(&offset);
            if set.is_empty() {
                self.blocked.remove(&key);
            }
        }
    }

    /// The head of `key` at `offset` is settled: the next record of the key (if tracked)
    /// heads it now and becomes available at its time.
    fn next_head(&mut self, key: u64, offset: u64) {
        if self.heads.get(&key) != Some(&offset) {
            return;
        }
        self.heads.remove(&key);
        let next = self.blocked.get(&key).and_then(|s| s.first().copied());
        if let Some(next) = next
            && let Some(State::Blocked { at_ms }) = self.entries.get(&next).map(|e| e.state.clone())
        {
            self.set_state(next, State::Waiting { at_ms });
        }
    }

    /// Rebuilds the key maps from the entries (after retention removed some).
    fn rekey(&mut self) {
        self.heads.clear();
        self.blocked.clear();
        let keyed: Vec<(u64, u64, bool)> = self
            .entries
            .iter()
            .filter_map(|(o, e)| {
                e.key
                    .map(|k| (*o, k, matches!(e.state, State::Blocked { .. })))
            })
            .collect();
        for (o, k, blocked) in keyed {
            if blocked {
                self.blocked.entry(k).or_default().insert(o);
            } else {
                self.heads.entry(k).or_insert(o);
            }
        }
        // A key whose head retention removed: its oldest waiting record heads it now.
        let orphans: Vec<(u64, u64)> = self
            .blocked
            .iter()
            .filter(|(k, _)| !self.heads.contains_key(k))
            .filter_map(|(k, s)| s.first().map(|o| (*k, *o)))
            .collect();
        for (_, o) in orphans {
            if let Some(State::Blocked { at_ms }) = self.entries.get(&o).map(|e| e.state.clone()) {
                self.set_state(o, State::Waiting { at_ms });
            }
        }
    }

    /// Settles `offset` (acked or dead-lettered): it is never delivered again. False if it
    /// was settled already (replay applies events a checkpoint may already hold).
    pub fn settle(&mut self, offset: u64) -> bool {
        if self.is_settled(offset) {
            return false;
        }
        if self.deferred.remove(offset) {
            // In a range already.
            return true;
        }
        if let Some(e) = self.entries.remove(&offset) {
            if matches!(e.state, State::Leased { .. }) {
                self.leased -= 1;
            }
            if let Some(k) = e.key {
                self.unblock(k, offset);
                self.next_head(k, offset);
            }
        }
        self.add_range(offset);
        true
    }

    /// A redrive makes a settled (dead-lettered) record available again from `at_ms`, its
    /// attempts reset, in a new `life`; under key ordering it waits for its key's current
    /// head, then goes first (it is the key's lowest offset). False (and nothing changes)
    /// when `offset` is not settled: it is available already, or deferred.
    pub fn redrive(&mut self, offset: u64, at_ms: i64, key: Option<u64>, life: u64) -> bool {
        if !self.is_settled(offset) {
            return false;
        }
        self.unrange(offset);
        let held = key.is_some_and(|k| self.heads.get(&k).is_some_and(|h| *h != offset));
        let state = if held {
            State::Blocked { at_ms }
        } else {
            State::Waiting { at_ms }
        };
        self.track_fresh(offset, state, key);
        if let Some(e) = self.entries.get_mut(&offset) {
            e.life = life;
        }
        true
    }

    /// Adds `offset` (not in a range) to the settled ranges, merging neighbours.
    fn add_range(&mut self, offset: u64) {
        let mut start = offset;
        let mut end = offset + 1;
        if let Some((&s, &e)) = self.settled.range(..offset).next_back()
            && e == offset
        {
            self.settled.remove(&s);
            start = s;
        }
        if let Some(e) = self.settled.remove(&end) {
            end = e;
        }
        self.settled.insert(start, end);
        self.advance_floor();
    }

    /// Takes `offset` (in a range or below the floor) out of the settled ranges.
    fn unrange(&mut self, offset: u64) {
        if offset < self.floor {
            // Everything in (offset, floor) stays settled or deferred.
            if offset + 1 < self.floor {
                self.settled.insert(offset + 1, self.floor);
            }
            self.floor = offset;
            return;
        }
        if let Some((&s, &e)) = self.settled.range(..=offset).next_back()
            && offset < e
        {
            self.settled.remove(&s);
            if s < offset {
                self.settled.insert(s, offset);
            }
            if offset + 1 < e {
                self.settled.insert(offset + 1, e);
            }
        }
    }

    /// The settled ranges above the floor, for a checkpoint.
    pub fn settled_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.settled.iter().map(|(s, e)| (*s, *e))
    }

    /// Adds a settled range from a checkpoint (ranges of one checkpoint never overlap).
    pub fn restore_settled(&mut self, start: u64, end: u64) {
        if end > self.floor {
            self.settled.insert(start.max(self.floor), end);
            self.advance_floor();
        }
    }

    fn advance_floor(&mut self) {
        while let Some(end) = self.settled.remove(&self.floor) {
            self.floor = end;
        }
        self.scan = self.scan.max(self.floor);
    }

    /// Retention removed every record below `start`: whatever of them was unsettled is
    /// gone. Returns how many unsettled records that was.
    pub fn drop_below(&mut self, start: u64) -> u64 {
        // Deferred offsets are in the ranges (or below the floor), counted as unsettled here.
        let deferred = self.deferred.remove_range(..start);
        if start <= self.floor {
            return deferred;
        }
        let unsettled = start - self.floor - self.settled_below(start) + deferred;
        let kept = self.entries.split_off(&start);
        for e in std::mem::replace(&mut self.entries, kept).into_values() {
            if matches!(e.state, State::Leased { .. }) {
                self.leased -= 1;
            }
        }
        let above = self.settled.split_off(&start);
        let straddling = self
            .settled
            .values()
            .next_back()
            .copied()
            .filter(|end| *end > start);
        self.settled = above;
        if let Some(end) = straddling {
            self.settled.insert(start, end);
        }
        self.floor = start;
        self.advance_floor();
        self.rekey();
        unsettled
    }

    /// Checks a settlement's lease id against the record's leases so far (in its current
    /// life): lease ids are derived from (partition, offset, attempt, life), so no history
    /// is stored.
    pub fn check_lease(
        &self,
        offset: u64,
        lease_id: u64,
        now_ms: i64,
        id_of: impl Fn(u32, u64) -> u64,
    ) -> LeaseCheck {
        let Some(e) = self.entries.get(&offset) else {
            return LeaseCheck::Unknown;
        };
        let id_of = |attempt| id_of(attempt, e.life);
        if e.attempt > 0 && id_of(e.attempt) == lease_id {
            return match e.state {
                State::Leased { expires_ms, .. } if expires_ms > now_ms => LeaseCheck::Active,
                _ => LeaseCheck::Ended,
            };
        }
        if (1..e.attempt).any(|a| id_of(a) == lease_id) {
            return LeaseCheck::Ended;
        }
        LeaseCheck::Unknown
    }
}

/// What follows a lease that ended unsettled after attempt `attempt` at `ended_ms`.
pub fn after_lease(
    attempt: u32,
    ended_ms: i64,
    max_deliveries: u32,
    backoff_ms: u64,
) -> AfterLease {
    if attempt >= max_deliveries {
        AfterLease::DeadLetter
    } else {
        AfterLease::RetryAt(ended_ms.saturating_add(backoff_ms as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Arc<str> {
        Arc::from("w")
    }

    #[test]
    fn acks_out_of_order_keep_ranges_and_move_the_floor() {
        let mut p = Partition::new(10);
        for o in 10..20 {
            p.grant(o, 1_000, 100, who(), None);
        }
        assert_eq!(p.leased(), 10);
        for o in [12, 14, 13, 11] {
            p.settle(o);
        }
        assert_eq!(p.floor(), 10);
        assert_eq!(p.settled.len(), 1, "11..15 is one range: {:?}", p.settled);
        p.settle(10);
        assert_eq!(p.floor(), 15);
        assert!(p.settled.is_empty());
        assert_eq!(p.leased(), 5);
        assert!(p.is_settled(14) && !p.is_settled(15));
    }

    #[test]
    fn lease_ids_name_the_current_or_an_ended_lease() {
        let mut p = Partition::new(0);
        let id = |a: u32, life: u64| 100 + u64::from(a) + 1_000 * life;
        p.grant(0, 1_000, 100, who(), None);
        assert_eq!(p.check_lease(0, 101, 500, id), LeaseCheck::Active);
        assert_eq!(p.check_lease(0, 101, 1_000, id), LeaseCheck::Ended);
        p.grant(0, 3_000, 100, who(), None);
        assert_eq!(p.check_lease(0, 101, 1_500, id), LeaseCheck::Ended);
        assert_eq!(p.check_lease(0, 102, 1_500, id), LeaseCheck::Active);
        assert_eq!(p.check_lease(0, 999, 1_500, id), LeaseCheck::Unknown);
        p.settle(0);
        assert_eq!(p.check_lease(0, 102, 1_500, id), LeaseCheck::Unknown);
    }

    #[test]
    fn retention_drops_what_it_removed_and_counts_the_unsettled() {
        let mut p = Partition::new(0);
        p.grant(2, 1_000, 100, who(), None);
        p.settle(3);
        p.settle(4);
        p.grant(7, 1_000, 100, who(), None);
        // 0..6: 3 and 4 settled, so 0, 1, 2 and 5 were unsettled.
        assert_eq!(p.drop_below(6), 4);
        assert_eq!(p.floor(), 6);
        assert_eq!(p.leased(), 1);
        assert_eq!(p.tracked(), 1);
        // A settled range straddling the new start is kept above it.
        p.settle(8);
        p.settle(9);
        // 6 (fresh) and 7 (leased) were unsettled.
        assert_eq!(p.drop_below(9), 2);
        assert_eq!(p.floor(), 10);
    }

    #[test]
    fn a_key_flows_one_record_at_a_time_in_offset_order() {
        let mut p = Partition::new(0);
        let k = Some(7);
        // 0 heads key 7; 1 and 3 wait behind it; 2 is another key.
        p.grant(0, 1_000, 100, who(), k);
        for o in [1, 3] {
            assert!(p.key_is_held(k));
            p.track_fresh(o, State::Blocked { at_ms: 5 }, k);
        }
        assert!(!p.key_is_held(Some(8)));
        assert_eq!(p.blocked_keys(), 1);
        // A nack keeps the head: the key stays held while it waits.
        p.set_state(0, State::Waiting { at_ms: 50 });
        assert!(matches!(p.entry(1).unwrap().state, State::Blocked { .. }));
        p.settle(0);
        assert_eq!(p.entry(1).unwrap().state, State::Waiting { at_ms: 5 });
        assert!(matches!(p.entry(3).unwrap().state, State::Blocked { .. }));
        p.grant(1, 1_000, 100, who(), None);
        p.settle(1);
        assert_eq!(p.entry(3).unwrap().state, State::Waiting { at_ms: 5 });
        assert_eq!(p.blocked_keys(), 0);
        p.settle(3);
        assert!(!p.key_is_held(k));
    }

    #[test]
    fn a_lease_end_retries_with_backoff_until_the_last_attempt() {
        assert_eq!(after_lease(1, 1_000, 5, 250), AfterLease::RetryAt(1_250));
        assert_eq!(after_lease(5, 1_000, 5, 250), AfterLease::DeadLetter);
    }

    #[test]
    fn deferred_records_let_the_floor_pass_and_come_back_as_waiting_entries() {
        let mut p = Partition::new(0);
        for o in 0..5 {
            p.defer(o);
        }
        p.settle(5);
        p.scanned_to(6);
        // The ranges pass over them, the reported floor does not.
        assert_eq!((p.floor(), p.ack_floor(), p.deferred()), (6, 0, 5));
        assert!(!p.is_settled(3) && !p.is_fresh(3) && p.is_deferred(3));
        assert!(p.undefer(3, 77));
        assert!(
            !p.undefer(3, 77),
            "a second timer for the same record is stale"
        );
        assert_eq!(p.entry(3).unwrap().state, State::Waiting { at_ms: 77 });
        assert_eq!((p.floor(), p.ack_floor(), p.deferred()), (3, 0, 4));
        // Leased, then acked: settled for good, the floor comes back up.
        p.grant(3, 1_000, 100, who(), None);
        p.settle(3);
        assert!(p.is_settled(3));
        assert_eq!(p.floor(), 6);
        for o in [0, 1, 2, 4] {
            assert!(p.undefer(o, 1));
            p.grant(o, 1_000, 100, who(), None);
            p.settle(o);
        }
        assert_eq!((p.floor(), p.ack_floor(), p.deferred()), (6, 6, 0));
        assert!(p.settled.is_empty());
    }

    #[test]
    fn a_redriven_record_below_the_floor_is_fresh_again_and_waits_for_its_key() {
        let mut p = Partition::new(0);
        let k = Some(7);
        for o in 0..6 {
            p.grant(
                o,
                1_000,
                100,
                who(),
                if o == 2 || o == 4 { k } else { None },
            );
        }
        for o in 0..5 {
            p.settle(o);
        }
        assert_eq!(p.floor(), 5);
        // A leased record is not settled: nothing to redrive.
        assert!(!p.redrive(5, 10, None, 1));
        assert!(p.redrive(1, 10, None, 9));
        assert_eq!((p.floor(), p.ack_floor()), (1, 1));
        assert_eq!(p.entry(1).unwrap().attempt, 0);
        assert_eq!(p.entry(1).unwrap().state, State::Waiting { at_ms: 10 });
        assert!(p.is_settled(0) && p.is_settled(2) && p.is_settled(4));
        // Key 7: 4 is redriven while nothing of the key is unsettled, it heads the key;
        // 2, redriven next, waits behind it although it is older.
        assert!(p.redrive(4, 10, k, 10));
        assert!(p.redrive(2, 10, k, 11));
        assert_eq!(p.entry(2).unwrap().state, State::Blocked { at_ms: 10 });
        assert!(!p.redrive(2, 10, k, 11), "redriven once");
        assert_eq!(p.grant(4, 1_000, 100, who(), k), 1, "attempts start again");
        p.settle(4);
        assert_eq!(p.entry(2).unwrap().state, State::Waiting { at_ms: 10 });
        // Lease ids of the record's first life do not match its new leases.
        let id = |a: u32, life: u64| 100 + u64::from(a) + 1_000 * life;
        assert_eq!(p.grant(1, 1_000, 100, who(), None), 1);
        assert_eq!(p.check_lease(1, id(1, 0), 500, id), LeaseCheck::Unknown);
        assert_eq!(p.check_lease(1, id(1, 9), 500, id), LeaseCheck::Active);
        for o in [1, 2] {
            p.grant(o, 1_000, 100, who(), None);
            p.settle(o);
        }
        assert_eq!(p.floor(), 5);
        assert!(p.settled.is_empty());
    }

    #[test]
    fn a_deferred_record_in_the_middle_of_a_range_splits_it_and_retention_counts_it() {
        let mut p = Partition::new(0);
        p.grant(0, 1_000, 100, who(), None);
        for o in 1..10 {
            if o == 5 {
                p.defer(o);
            } else {
                p.settle(o);
            }
        }
        assert_eq!(p.settled.len(), 1);
        assert!(p.undefer(5, 9));
        assert_eq!(p.settled.len(), 2, "{:?}", p.settled);
        assert!(p.is_settled(4) && p.is_settled(6) && !p.is_settled(5));
        p.set_state(5, State::Waiting { at_ms: 9 });
        p.defer(10);
        p.scanned_to(11);
        // Retention removes 0..11: 0 (leased), 5 (waiting) and 10 (deferred) were unsettled.
        assert_eq!(p.drop_below(11), 3);
        assert_eq!((p.deferred(), p.tracked(), p.ack_floor()), (0, 0, 11));
    }
}
