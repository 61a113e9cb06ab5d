//! Offsets without records: a compacted topic's partitions have gaps (compaction removes
//! records, never renumbers them). A scan that meets one settles its untracked offsets as
//! one range, so the floor moves past it and the settled ranges stay few.

use super::Partition;

impl Partition {
    /// Settles the offsets `from..to`, which a scan found hold no records, except those
    /// tracked (a record leased before compaction removed it is resolved when it is read
    /// again and found missing).
    pub fn skip_gap(&mut self, from: u64, to: u64) {
        let mut start = from.max(self.floor);
        let tracked: Vec<u64> = self.entries.range(start..to).map(|(o, _)| *o).collect();
        for o in tracked {
            self.settle_range(start, o);
            start = o + 1;
        }
        self.settle_range(start, to);
    }

    /// Adds `start..end` to the settled ranges, merged with the ranges it meets.
    fn settle_range(&mut self, mut start: u64, mut end: u64) {
        if end <= start {
            return;
        }
        if let Some((&s, &e)) = self.settled.range(..=start).next_back()
            && e >= start
        {
            self.settled.remove(&s);
            start = s;
            end = end.max(e);
        }
        let inside: Vec<(u64, u64)> = self
            .settled
            .range(start..=end)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in inside {
            self.settled.remove(&s);
            end = end.max(e);
        }
        self.settled.insert(start, end);
        self.advance_floor();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_gap_is_one_range_around_tracked_records_and_moves_the_floor() {
        let mut p = Partition::new(0);
        p.grant(0, 1_000, 100, Arc::from("w"), None);
        p.grant(5, 1_000, 100, Arc::from("w"), None);
        // 1..5 and 6..1000 hold no records; 5 is leased.
        p.skip_gap(1, 1_000);
        assert_eq!(p.floor(), 0);
        assert_eq!(p.settled.len(), 2, "{:?}", p.settled);
        p.settle(5);
        assert_eq!(p.settled.len(), 1, "merged: {:?}", p.settled);
        p.settle(0);
        assert_eq!(p.floor(), 1_000);
        assert!(p.settled.is_empty());
        // A gap over settled ranges absorbs them.
        p.settle(1_003);
        p.settle(1_010);
        p.skip_gap(1_001, 1_020);
        assert_eq!(p.settled.iter().collect::<Vec<_>>(), [(&1_001, &1_020)]);
    }
}
