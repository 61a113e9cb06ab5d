//! Harness of the `index_parse` target: the offset and time index functions over arbitrary
//! bytes never panic; `valid_offset_prefix` and `valid_time_prefix` return the longest
//! well-formed prefix (whole entries, ordered, in range); lookups on any bytes return a real
//! entry that satisfies the lookup's bound, and on a valid prefix exactly the entry a linear
//! scan finds.
//!
//! Input: a selector and the values for `log_len` and `rel_end`, four offset queries and four
//! time queries, then the rest is the index bytes (read both as an offset and a time index).

use spool_storage::index::{
    self, OFFSET_ENTRY_LEN, OffsetEntry, TIME_ENTRY_LEN, TimeEntry, offset_entries, offset_entry,
    time_entries,
};

use crate::input::Reader;

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let log_len = match r.u8() % 3 {
        0 => u64::MAX,
        1 => u64::from(r.u32()),
        _ => u64::from(r.u16()),
    };
    let rel_end = match r.u8() % 3 {
        0 => u64::MAX,
        1 => u64::from(r.u32()),
        _ => u64::from(r.u8()),
    };
    let rels: Vec<u32> = (0..4).map(|_| r.u32()).collect();
    let times: Vec<i64> = (0..4).map(|_| r.timestamp()).collect();
    let idx = r.rest();

    check_offsets(idx, log_len, &rels);
    check_times(idx, rel_end, &times);
}

fn all_offsets(idx: &[u8]) -> Vec<OffsetEntry> {
    (0..offset_entries(idx))
        .map(|i| offset_entry(idx, i))
        .collect()
}

fn all_times(idx: &[u8]) -> Vec<TimeEntry> {
    // No public accessor by position: decode the entries the way docs/format.md draws them.
    idx.chunks_exact(TIME_ENTRY_LEN)
        .map(|b| TimeEntry {
            ts: i64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            rel: u32::from_le_bytes(b[8..].try_into().expect("4 bytes")),
        })
        .collect()
}

fn check_offsets(idx: &[u8], log_len: u64, rels: &[u32]) {
    let entries = all_offsets(idx);
    assert_eq!(entries.len(), idx.len() / OFFSET_ENTRY_LEN);
    let prefix = index::valid_offset_prefix(idx, log_len);
    assert_eq!(prefix % OFFSET_ENTRY_LEN, 0, "prefix cuts an entry");
    assert!(
        prefix <= entries.len() * OFFSET_ENTRY_LEN,
        "prefix past the entries"
    );
    let kept = prefix / OFFSET_ENTRY_LEN;
    let ok = |i: usize| {
        let e = entries[i];
        u64::from(e.pos) < log_len
            && e.pos > 0
            && (i == 0 || (e.rel > entries[i - 1].rel && e.pos > entries[i - 1].pos))
    };
    assert!((0..kept).all(ok), "the valid prefix holds a bad entry");
    if kept < entries.len() {
        assert!(!ok(kept), "the valid prefix stops before a good entry");
    }
    // The prefix is itself valid, whole.
    assert_eq!(index::valid_offset_prefix(&idx[..prefix], log_len), prefix);

    for &rel in rels {
        // Any bytes: a real entry at or below `rel`, or none.
        if let Some(e) = index::offset_lookup(idx, rel) {
            assert!(e.rel <= rel, "lookup for {rel} returned {e:?}");
            assert!(
                entries.contains(&e),
                "lookup returned an entry that is not there"
            );
        }
        // A valid index: exactly the last entry at or below `rel`.
        let want = entries[..kept].iter().rev().find(|e| e.rel <= rel).copied();
        assert_eq!(index::offset_lookup(&idx[..prefix], rel), want);
    }
}

fn check_times(idx: &[u8], rel_end: u64, times: &[i64]) {
    let entries = all_times(idx);
    assert_eq!(time_entries(idx), entries.len());
    assert_eq!(index::last_time_entry(idx), entries.last().copied());
    let prefix = index::valid_time_prefix(idx, rel_end);
    assert_eq!(prefix % TIME_ENTRY_LEN, 0, "prefix cuts an entry");
    assert!(
        prefix <= entries.len() * TIME_ENTRY_LEN,
        "prefix past the entries"
    );
    let kept = prefix / TIME_ENTRY_LEN;
    let ok = |i: usize| {
        let e = entries[i];
        u64::from(e.rel) < rel_end
            && (i == 0 || (e.ts > entries[i - 1].ts && e.rel >= entries[i - 1].rel))
    };
    assert!((0..kept).all(ok), "the valid prefix holds a bad entry");
    if kept < entries.len() {
        assert!(!ok(kept), "the valid prefix stops before a good entry");
    }
    assert_eq!(index::valid_time_prefix(&idx[..prefix], rel_end), prefix);

    for &ts in times {
        if let Some(e) = index::time_lookup(idx, ts) {
            assert!(e.ts < ts, "lookup for {ts} returned {e:?}");
            assert!(
                entries.contains(&e),
                "lookup returned an entry that is not there"
            );
        }
        let want = entries[..kept].iter().rev().find(|e| e.ts < ts).copied();
        assert_eq!(index::time_lookup(&idx[..prefix], ts), want);
    }
}
