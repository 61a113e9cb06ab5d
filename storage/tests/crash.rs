//! Crash tests: torn tails cut at every byte, flipped bytes in the tail and in closed
//! segments, and a child process appending with `Durability::Always` killed with SIGKILL.
//!
//! The kill test re-runs this test binary with `child_appender` as its only test; that
//! helper acts as the child when `SPOOL_CRASH_CHILD_DIR` names a data directory and returns
//! at once otherwise.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, RwLock, RwLockReadGuard, mpsc};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spool_storage::{Durability, Error, LogConfig, ProducerStamp, Record};

const LOG: &str = "crash/0";
/// Room the byte-level tests need on a RAM disk: a few small logs at a time.
const RAM_NEED: u64 = 16 * 1024 * 1024;

/// Spawning the child forks this process: until the child execs, it holds a copy of every
/// descriptor, the data directory locks of other tests included, so a test that drops a
/// storage and reopens it at that moment finds it locked. Tests that reopen hold this for
/// reading; the kill test takes it for writing around each spawn (which returns after the
/// exec, when the copies are closed).
static SPAWN: RwLock<()> = RwLock::new(());

/// The kill tests run one at a time: each holds storages open between its own spawns,
/// where another kill test's spawn would copy their lock descriptors.
static KILL_TESTS: Mutex<()> = Mutex::new(());

fn no_spawns() -> RwLockReadGuard<'static, ()> {
    SPAWN.read().unwrap_or_else(|e| e.into_inner())
}

/// A random seed, printed so a failure can be replayed with `SPOOL_TEST_SEED`.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("SPOOL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with SPOOL_TEST_SEED={seed})");
    seed
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The `.log` files of the log, oldest first.
fn segment_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root.join(LOG))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Positions of the offset index entries of a segment (`u32 rel, u32 pos` each).
fn index_positions(log_file: &Path) -> Vec<usize> {
    let idx = fs::read(log_file.with_extension("index")).unwrap_or_default();
    idx.chunks_exact(8)
        .map(|e| u32::from_le_bytes([e[4], e[5], e[6], e[7]]) as usize)
        .collect()
}

fn flip(path: &Path, pos: usize, mask: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos as u64).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, pos as u64).unwrap();
}

/// A log written once and closed without `close()` (as a crash leaves it, page cache
/// intact): every batch's records and base offset, and the layout of the last segment.
struct Written {
    dir: tempfile::TempDir,
    /// `(base_offset, records)` of every batch, in order.
    batches: Vec<(u64, Vec<Record>)>,
    /// The last segment file, its batch start positions and the end of its last batch.
    last_file: PathBuf,
    starts: Vec<usize>,
    data_end: usize,
    /// Index into `batches` of the last segment's first batch.
    first_in_last: usize,
}

impl Written {
    fn all_records(&self) -> Vec<Record> {
        self.batches
            .iter()
            .flat_map(|(_, r)| r.iter().cloned())
            .collect()
    }

    /// The offset where the log must end when the last segment keeps `k` whole batches.
    fn end_with(&self, k: usize) -> u64 {
        self.batches
            .get(self.first_in_last + k)
            .map_or_else(|| self.end(), |(base, _)| *base)
    }

    fn end(&self) -> u64 {
        let (base, records) = self.batches.last().unwrap();
        base + records.len() as u64
    }
}

fn tail_config() -> LogConfig {
    LogConfig {
        index_interval_bytes: 4096,
        // Every entry reaches the index files at once, so the tail recovery scans is the
        // part after the last entry written.
        index_persist_bytes: 1,
        ..common::small_config(Durability::Never)
    }
}

/// Writes a log of at least two segments whose last segment has at least one offset index
/// entry and, after its last entry, at least `after_last_entry` batches (the part recovery
/// scans), then drops it without a clean close.
fn write_log(config: &LogConfig, after_last_entry: usize) -> Written {
    let dir = common::ram_tempdir(RAM_NEED);
    let mut batches = Vec::new();
    {
        let (_storage, log) = common::open(dir.path(), LOG, config.clone());
        loop {
            let base = log.end_offset();
            let records = common::append_batch(&log, 2, 1, base as i64);
            batches.push((base, records));
            if log.segment_count() < 2 {
                continue;
            }
            let last = segment_files(dir.path()).pop().unwrap();
            let entries = index_positions(&last);
            let Some(&last_entry) = entries.last() else {
                continue;
            };
            let data = fs::read(&last).unwrap();
            let (starts, _) = common::batch_starts(&data);
            if starts.iter().filter(|&&p| p >= last_entry).count() >= after_last_entry {
                break;
            }
        }
    }
    let last_file = segment_files(dir.path()).pop().unwrap();
    let data = fs::read(&last_file).unwrap();
    let (starts, data_end) = common::batch_starts(&data);
    assert!(
        data.len() > data_end,
        "the file keeps its preallocated tail"
    );
    let base: u64 = last_file
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let first_in_last = batches.iter().position(|(b, _)| *b == base).unwrap();
    assert_eq!(starts.len(), batches.len() - first_in_last);
    // The file holds exactly the bytes the format defines for each batch.
    for (i, &pos) in starts.iter().enumerate() {
        let (b, records) = &batches[first_in_last + i];
        let mut want = Vec::new();
        let stored = spool_storage::batch::decode_header(&data[pos..]).unwrap();
        spool_storage::batch::encode(
            &mut want,
            *b,
            ProducerStamp::default(),
            records,
            stored.append_time_ms,
        );
        assert_eq!(&data[pos..pos + want.len()], &want[..], "batch {b} bytes");
    }
    Written {
        dir,
        batches,
        last_file,
        starts,
        data_end,
        first_in_last,
    }
}

/// Reopens a damaged copy and checks it ends at `want_end` with every earlier record intact,
/// nothing served at or after it, and that appending afterwards works across a reopen.
fn check_recovered(root: &Path, written: &Written, want_end: u64, what: &str) -> u64 {
    let all = written.all_records();
    let dropped;
    {
        let (_storage, log) = common::open(root, LOG, tail_config());
        assert_eq!(log.end_offset(), want_end, "{what}: end offset");
        assert_eq!(log.open_report().end_offset, want_end, "{what}: report");
        dropped = log.open_report().dropped_bytes;
        let from = want_end.saturating_sub(40);
        common::assert_records(
            &common::read_all(&log, from),
            from,
            &all[from as usize..want_end as usize],
        );
        assert!(
            log.read(want_end, usize::MAX, usize::MAX)
                .unwrap()
                .is_empty(),
            "{what}: nothing served at the end"
        );
        assert!(
            matches!(
                log.read(want_end + 1, 1, 1),
                Err(Error::OffsetOutOfRange { .. })
            ),
            "{what}: nothing served past the end"
        );
        assert_eq!(log.verify().unwrap(), vec![], "{what}: verify");
        common::append_batch(&log, 3, 99, 1);
    }
    let (_storage, log) = common::open(root, LOG, tail_config());
    assert_eq!(log.end_offset(), want_end + 3, "{what}: end after append");
    assert_eq!(log.open_report().dropped_bytes, 0, "{what}: second reopen");
    let got = log.read(want_end, usize::MAX, usize::MAX).unwrap();
    let want: Vec<Record> = (0..3)
        .map(|i| common::record_for(want_end + i, 99, 1))
        .collect();
    common::assert_records(&got, want_end, &want);
    dropped
}

#[test]
fn recovery_keeps_exactly_the_complete_batches_when_the_tail_is_cut_at_every_byte() {
    let _no_spawns = no_spawns();
    let written = write_log(&tail_config(), 3);
    let n = written.starts.len();
    let from = written.starts[n - 3];
    let pristine = fs::read(&written.last_file).unwrap();
    let rel = written.last_file.strip_prefix(written.dir.path()).unwrap();
    for cut in from..=written.data_end {
        let copy = common::ram_tempdir(RAM_NEED);
        copy_dir(written.dir.path(), copy.path());
        OpenOptions::new()
            .write(true)
            .open(copy.path().join(rel))
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let whole = written
            .starts
            .iter()
            .enumerate()
            .filter(|&(i, _)| {
                written
                    .starts
                    .get(i + 1)
                    .copied()
                    .unwrap_or(written.data_end)
                    <= cut
            })
            .count();
        let valid_end = written
            .starts
            .get(whole)
            .copied()
            .unwrap_or(written.data_end);
        let dropped = check_recovered(
            copy.path(),
            &written,
            written.end_with(whole),
            &format!("cut at byte {cut}"),
        );
        let want_dropped = pristine[valid_end..cut]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |p| p as u64 + 1);
        assert_eq!(dropped, want_dropped, "cut at byte {cut}: dropped bytes");
    }
}

/// Random flips of 1-3 bytes in the part of the last segment recovery scans (the batches
/// from its last index entry on, at least three, and the preallocated zeros after them).
/// Returns each trial's copy, flipped positions and the index (in the last segment) of the
/// first batch hit, `None` when only the zeros after the last batch were hit.
fn tail_flip_trials(
    written: &Written,
    name: &str,
    trials: usize,
    mut check: impl FnMut(&Path, &[usize], Option<usize>, &str),
) {
    let n = written.starts.len();
    let last_entry = *index_positions(&written.last_file).last().unwrap();
    let tail_start = written.starts[n - 3].max(last_entry);
    assert!(written.starts.iter().filter(|&&p| p >= tail_start).count() >= 3);
    let rel = written.last_file.strip_prefix(written.dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed(name));
    for trial in 0..trials {
        let copy = common::ram_tempdir(RAM_NEED);
        copy_dir(written.dir.path(), copy.path());
        let flips: Vec<usize> = (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(tail_start..written.data_end + 64))
            .collect();
        for &pos in &flips {
            flip(&copy.path().join(rel), pos, rng.random_range(1..=255));
        }
        let first = *flips.iter().min().unwrap();
        let hit = (first < written.data_end)
            .then(|| written.starts.iter().filter(|&&p| p <= first).count() - 1);
        check(
            copy.path(),
            &flips,
            hit,
            &format!("trial {trial}: flips at {flips:?}"),
        );
    }
}

/// The invariant whatever the recovery policy does with intact batches after damage: no
/// record of a damaged batch is ever served (an error or past the end), every record before
/// the first damaged batch survives, every record served is the one written, and appending
/// afterwards works across a reopen.
#[test]
fn flipped_bytes_in_the_tail_are_never_served_and_earlier_records_survive() {
    let _no_spawns = no_spawns();
    let written = write_log(&tail_config(), 3);
    let all = written.all_records();
    let n = written.starts.len();
    tail_flip_trials(&written, "tail flips", 150, |root, flips, hit, what| {
        let damaged = |k: usize| {
            let (from, to) = (
                written.starts[k],
                written
                    .starts
                    .get(k + 1)
                    .copied()
                    .unwrap_or(written.data_end),
            );
            flips.iter().any(|&p| (from..to).contains(&p))
        };
        // A damaged batch followed by one whose base offset (bytes 0..8, outside the CRC)
        // is damaged is left to the deterministic test below, which the working tree's
        // recovery fails.
        let later_base_hit = hit.is_some_and(|k| {
            written.starts[k + 1..]
                .iter()
                .any(|&b| flips.iter().any(|&p| (b..b + 8).contains(&p)))
        });
        if later_base_hit {
            eprintln!("{what}: skipped (damaged base offset after damage)");
            return;
        }
        let first_damaged = hit.map_or(written.end(), |k| written.end_with(k));
        let end;
        {
            let (_storage, log) = common::open(root, LOG, tail_config());
            end = log.end_offset();
            assert!(
                (first_damaged..=written.end()).contains(&end),
                "{what}: end {end} outside {first_damaged}..={}",
                written.end()
            );
            assert!(log.open_report().dropped_bytes > 0 || end > first_damaged || hit.is_none());
            let from = first_damaged.saturating_sub(40);
            common::assert_records(
                &common::read_all_until(&log, from, first_damaged),
                from,
                &all[from as usize..first_damaged as usize],
            );
            for k in 0..n {
                let (base, records) = &written.batches[written.first_in_last + k];
                for o in *base..base + records.len() as u64 {
                    if o >= end {
                        continue;
                    }
                    match log.read(o, 1, usize::MAX) {
                        Ok(got) if !damaged(k) => {
                            common::assert_records(&got, o, &all[o as usize..o as usize + 1]);
                        }
                        Err(Error::Corrupt { offsets, .. }) if damaged(k) => {
                            let lost = offsets.expect("lost offsets bounded");
                            assert!(lost.contains(&o), "{what}: {o} not in {lost:?}");
                        }
                        other => panic!(
                            "{what}: read at {o} (damaged batch: {}): {other:?}",
                            damaged(k)
                        ),
                    }
                }
            }
            common::append_batch(&log, 3, 99, 1);
        }
        let (_storage, log) = common::open(root, LOG, tail_config());
        assert_eq!(log.end_offset(), end + 3, "{what}: end after append");
        let got = log.read(end, usize::MAX, usize::MAX).unwrap();
        let want: Vec<Record> = (0..3).map(|i| common::record_for(end + i, 99, 1)).collect();
        common::assert_records(&got, end, &want);
    });
}

/// Damage in one tail batch and a damaged base offset (not covered by the CRC) in the next
/// one: recovery must never resume at a batch that claims a wrong offset. Found by the test
/// above against a working-tree recovery that resynchronises after damage.
#[test]
fn recovery_never_resumes_at_a_batch_whose_base_offset_is_damaged() {
    let _no_spawns = no_spawns();
    let written = write_log(&tail_config(), 3);
    let all = written.all_records();
    let n = written.starts.len();
    // A record byte of batch n-3 (its CRC fails), and bit 48 of batch n-2's base offset.
    flip(&written.last_file, written.starts[n - 3] + 70, 0x40);
    flip(&written.last_file, written.starts[n - 2] + 6, 0x01);
    let (_storage, log) = common::open(written.dir.path(), LOG, tail_config());
    let end = log.end_offset();
    let first_damaged = written.end_with(n - 3);
    assert!(
        (first_damaged..=written.end()).contains(&end),
        "end {end} outside {first_damaged}..={}",
        written.end()
    );
    for o in first_damaged.saturating_sub(10)..end {
        match log.read(o, 1, usize::MAX) {
            Ok(got) => common::assert_records(&got, o, &all[o as usize..o as usize + 1]),
            Err(Error::Corrupt { .. }) => assert!(o >= first_damaged),
            Err(e) => panic!("read at {o}: {e}"),
        }
    }
}

#[test]
fn damage_in_the_last_segment_before_its_last_index_entry_is_never_served() {
    let _no_spawns = no_spawns();
    let written = write_log(&tail_config(), 1);
    let last_entry = *index_positions(&written.last_file).last().unwrap();
    // A value byte (covered by the CRC only) of the batch just before the last entry.
    let k = written.starts.iter().filter(|&&p| p < last_entry).count() - 1;
    let pos = written.starts[k] + 70;
    flip(&written.last_file, pos, 0x40);
    let (base, records) = &written.batches[written.first_in_last + k];
    let (_storage, log) = common::open(written.dir.path(), LOG, tail_config());
    let all = written.all_records();
    if log.end_offset() <= *base {
        // Recovery cut the log before the damage.
        common::assert_records(
            &common::read_all(&log, 0),
            0,
            &all[..log.end_offset() as usize],
        );
        return;
    }
    // Otherwise the damaged batch stays, but is an error on read and reported by verify.
    for o in *base..base + records.len() as u64 {
        match log.read(o, usize::MAX, usize::MAX) {
            Err(Error::Corrupt { offsets, .. }) => {
                assert_eq!(offsets, Some(*base..base + records.len() as u64));
            }
            other => panic!("read of damaged offset {o}: {other:?}"),
        }
    }
    let damage = log.verify().unwrap();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0].offsets, *base..base + records.len() as u64);
    let next = base + records.len() as u64;
    common::assert_records(&common::read_all(&log, next), next, &all[next as usize..]);
}

/// Flips bytes inside one closed segment and checks that the damaged batches are an error
/// on read, reads on either side still work, and `verify` reports exactly that range.
#[test]
fn corrupt_batch_in_a_closed_segment_is_an_error_on_read_and_reported_by_verify() {
    let _no_spawns = no_spawns();
    let config = common::small_config(Durability::Never);
    let dir = common::ram_tempdir(RAM_NEED);
    let mut all = Vec::new();
    {
        let (_storage, log) = common::open(dir.path(), LOG, config.clone());
        while log.segment_count() < 4 {
            all.extend(common::append_batch(&log, 3, 5, all.len() as i64));
        }
    }
    let files = segment_files(dir.path());
    let victim = files[1].clone();
    let data = fs::read(&victim).unwrap();
    let (starts, data_end) = common::batch_starts(&data);
    assert_eq!(
        data_end,
        data.len(),
        "a closed segment holds whole batches only"
    );
    let seg_base: u64 = victim
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let base_at = |i: usize| -> u64 {
        starts
            .get(i)
            .map_or_else(|| files_base(&files[2]), |&p| u64_at(&data, p))
    };
    let mut rng = StdRng::seed_from_u64(seed("closed segment flips"));
    // (first damaged byte, damaged length, batches hit)
    let mut cases: Vec<(usize, usize, usize)> = Vec::new();
    for _ in 0..12 {
        let m = rng.random_range(2..starts.len() - 2);
        let len = starts[m + 1] - starts[m];
        cases.push((starts[m] + rng.random_range(0..len), 1, 1));
    }
    // Header fields: base offset, length, magic, version, CRC.
    let m = starts.len() / 2;
    for field in [0, 9, 13, 16, 18] {
        cases.push((starts[m] + field, 1, 1));
    }
    // A smear across the boundary of two batches.
    cases.push((starts[m + 1] - 20, 40, 2));

    for (case, &(at, len, hit)) in cases.iter().enumerate() {
        let copy = common::ram_tempdir(RAM_NEED);
        copy_dir(dir.path(), copy.path());
        let path = copy.path().join(victim.strip_prefix(dir.path()).unwrap());
        let mut mask = [0u8; 64];
        rng.fill(&mut mask[..len]);
        for (i, m) in mask[..len].iter().enumerate() {
            flip(&path, at + i, (*m).max(1));
        }
        let m = starts.iter().filter(|&&p| p <= at).count() - 1;
        let lost = base_at(m)..base_at(m + hit);
        let what = format!("case {case}: {len} byte(s) at {at}, offsets {lost:?}");

        let (_storage, log) = common::open(copy.path(), LOG, config.clone());
        assert_eq!(log.end_offset(), all.len() as u64, "{what}: end");
        for o in [lost.start, lost.start + 1, lost.end - 1] {
            match log.read(o, usize::MAX, usize::MAX) {
                Err(Error::Corrupt {
                    path: p, offsets, ..
                }) => {
                    assert_eq!(p, path, "{what}: error names the segment");
                    assert_eq!(offsets, Some(lost.clone()), "{what}: lost offsets");
                }
                other => panic!("{what}: read at {o}: {other:?}"),
            }
        }
        // Before the damage: from the segment's start (and from the log's start) a read
        // returns exactly the records up to the damage, never past it.
        for from in [0, seg_base, lost.start - 1] {
            let mut next = from;
            while next < lost.start {
                let got = log.read(next, usize::MAX, usize::MAX).unwrap();
                assert!(!got.is_empty(), "{what}: progress at {next}");
                common::assert_records(&got, next, &all[next as usize..next as usize + got.len()]);
                next += got.len() as u64;
                assert!(next <= lost.start, "{what}: read past the damage");
            }
        }
        // After the damage: everything up to the end.
        common::assert_records(
            &common::read_all(&log, lost.end),
            lost.end,
            &all[lost.end as usize..],
        );
        // Exactly one damaged range in the log file; an index that disagrees with the
        // damaged batch may be reported too, but loses no offsets.
        let (damage, other): (Vec<_>, Vec<_>) = log
            .verify()
            .unwrap()
            .into_iter()
            .partition(|d| d.segment == path);
        assert_eq!(damage.len(), 1, "{what}: {damage:?}");
        assert!(
            other.iter().all(|d| d.offsets.is_empty()),
            "{what}: {other:?}"
        );
        assert_eq!(damage[0].offsets, lost, "{what}");
        assert_eq!(
            damage[0].positions,
            starts[m] as u64..starts.get(m + hit).map_or(data.len(), |&p| p) as u64,
            "{what}: positions"
        );
    }
}

fn u64_at(data: &[u8], pos: usize) -> u64 {
    u64::from_le_bytes(data[pos..pos + 8].try_into().unwrap())
}

fn files_base(file: &Path) -> u64 {
    file.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// SIGKILL: a real child process appending with `Durability::Always`.

const CHILD_DIR_ENV: &str = "SPOOL_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "SPOOL_CRASH_CHILD_SEED";
const CHILD_SEGMENT_ENV: &str = "SPOOL_CRASH_CHILD_SEGMENT_BYTES";
const PRODUCER: u64 = 7;

/// The child's log: `Always`, with segments of `segment_bytes`.
fn child_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        ..common::small_config(Durability::Always)
    }
}

fn stamp(sequence: u64) -> ProducerStamp {
    ProducerStamp {
        producer_id: PRODUCER,
        producer_epoch: 0,
        sequence,
    }
}

/// The records of the child's batch `sequence` at `base`: content follows from both.
fn child_batch(base: u64, count: u64, sequence: u64) -> Vec<Record> {
    (0..count)
        .map(|i| common::record_for(base + i, sequence, (base + i) as i64))
        .collect()
}

/// The sequence a stored child record was written with (its second header).
fn sequence_of(r: &spool_storage::StoredRecord) -> u64 {
    u64::from_le_bytes(r.headers[1].value[..].try_into().unwrap())
}

fn records_checksum(records: &[Record]) -> u64 {
    common::checksum(records.iter().map(|r| (&r.key[..], &r.value[..])))
}

/// The child side of the kill test; does nothing unless run by it.
#[test]
#[ignore = "helper: run as a child process by the sigkill tests"]
fn child_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let seed = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let segment_bytes = std::env::var(CHILD_SEGMENT_ENV).unwrap().parse().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let (_storage, log) = common::open(Path::new(&dir), LOG, child_config(segment_bytes));
    let mut sequence = match log.end_offset() {
        0 => 0,
        end => sequence_of(&log.read(end - 1, 1, 0).unwrap()[0]) + 1,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", log.end_offset()).unwrap();
    out.flush().unwrap();
    loop {
        let base = log.end_offset();
        let count = rng.random_range(1..=8);
        let records = child_batch(base, count, sequence);
        let a = log.append(&records, stamp(sequence)).unwrap();
        assert_eq!((a.base_offset, a.duplicate, a.fsynced), (base, false, true));
        // Reported only now that append returned: this batch is acknowledged.
        writeln!(
            out,
            "ok {base} {count} {sequence} {} .",
            records_checksum(&records)
        )
        .unwrap();
        out.flush().unwrap();
        sequence += 1;
    }
}

/// One acknowledged append as the child reported it.
#[derive(Clone, Copy, Debug)]
struct Acked {
    base: u64,
    count: u64,
    sequence: u64,
    checksum: u64,
}

fn parse_ack(line: &str) -> Option<Acked> {
    let f: Vec<&str> = line[line.find("ok ")?..].split(' ').collect();
    if f.len() != 6 || f[0] != "ok" || f[5] != "." {
        return None;
    }
    Some(Acked {
        base: f[1].parse().ok()?,
        count: f[2].parse().ok()?,
        sequence: f[3].parse().ok()?,
        checksum: f[4].parse().ok()?,
    })
}

/// Runs the child until it reports ready, lets it append for `run_for`, kills it with
/// SIGKILL and returns what it acknowledged.
fn run_child(
    dir: &Path,
    seed: u64,
    segment_bytes: u64,
    run_for: Duration,
    stderr: &Path,
) -> Vec<Acked> {
    let spawning = SPAWN.write().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_appender",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .env(CHILD_SEGMENT_ENV, segment_bytes.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(stderr).unwrap())
        .spawn()
        .expect("spawn child");
    drop(spawning);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // libtest prints "test child_appender ... " without a newline before the test's own
    // output, so the child's first line arrives behind it: look for the token anywhere.
    let deadline = Instant::now() + Duration::from_secs(20);
    let started = Instant::now();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("ready ") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "child never got ready ({e}) after {:?}; stderr: {}",
                    started.elapsed(),
                    fs::read_to_string(stderr).unwrap_or_default()
                );
            }
        }
    }
    let mut lines = Vec::new();
    std::thread::sleep(run_for);
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(
        still_running,
        "child exited on its own ({status}); stderr: {}",
        fs::read_to_string(stderr).unwrap_or_default()
    );
    lines.iter().filter_map(|l| parse_ack(l)).collect()
}

/// Checks every acknowledged append after a kill, then retries the last one (and any
/// batch written but never acknowledged) as an idempotent producer would.
fn check_after_kill(dir: &Path, kill: &KillTest, before: u64, acked: &[Acked], round: usize) {
    let (_storage, log) = common::open(dir, LOG, child_config(kill.segment_bytes));
    let end = log.end_offset();
    for a in acked {
        assert!(
            a.base + a.count <= end,
            "round {round}: acknowledged {a:?} lost (end {end})"
        );
        let got = log.read(a.base, a.count as usize, usize::MAX).unwrap();
        let want = child_batch(a.base, a.count, a.sequence);
        common::assert_records(&got, a.base, &want);
        assert_eq!(
            records_checksum(&want),
            a.checksum,
            "round {round}: checksum"
        );
    }
    // Every record in the log, acknowledged or not, is exactly what the child wrote.
    let all = common::read_all(&log, 0);
    assert_eq!(all.len() as u64, end);
    for r in &all {
        let want = common::record_for(r.offset, sequence_of(r), r.offset as i64);
        common::assert_record(r, r.offset, &want);
    }
    assert_eq!(log.verify().unwrap(), vec![], "round {round}: verify");
    if !kill.retry {
        return;
    }

    // Idempotent retries after the kill: the last acknowledged batch, and the batch after
    // it if it reached the log without being acknowledged, are duplicates with their
    // original offsets.
    let mut retries: Vec<(u64, u64, u64)> = acked
        .last()
        .map(|a| (a.base, a.count, a.sequence))
        .into_iter()
        .collect();
    let acked_end = acked.last().map_or(before, |a| a.base + a.count);
    if end > acked_end {
        let first = &log.read(acked_end, 1, 0).unwrap()[0];
        let sequence = sequence_of(first);
        let count = all[acked_end as usize..]
            .iter()
            .take_while(|r| sequence_of(r) == sequence)
            .count() as u64;
        assert_eq!(
            acked_end + count,
            end,
            "round {round}: at most one unacknowledged batch"
        );
        retries.push((acked_end, count, sequence));
    }
    for (base, count, sequence) in retries {
        let again = log
            .append(&child_batch(base, count, sequence), stamp(sequence))
            .unwrap_or_else(|e| {
                panic!(
                    "round {round}: retry of sequence {sequence}: {e}\nfiles: {}",
                    listing(&dir.join(LOG))
                )
            });
        assert!(
            again.duplicate,
            "round {round}: retry of {sequence} is a duplicate"
        );
        assert_eq!(
            (again.base_offset, u64::from(again.record_count)),
            (base, count),
            "round {round}: retry answers the original offsets"
        );
        assert_eq!(
            log.end_offset(),
            end,
            "round {round}: a retry writes nothing"
        );
    }
}

/// `name size` of every file in `dir`, for failure messages.
fn listing(dir: &Path) -> String {
    let mut files: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    format!("{} {len}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.join(", ")
}

/// How one kill test runs its child.
struct KillTest {
    name: &'static str,
    segment_bytes: u64,
    /// Retry acknowledged batches as an idempotent producer after each kill.
    retry: bool,
}

/// Rounds of: run the child in the same directory (it continues at the end), kill it with
/// SIGKILL after a random short time, reopen and check. `SPOOL_CRASH_ROUNDS` runs more.
fn kill_rounds(kill: &KillTest) {
    let _one_at_a_time = KILL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("child.stderr");
    let data = dir.path().join("data");
    let config = child_config(kill.segment_bytes);
    let mut rng = StdRng::seed_from_u64(seed(kill.name));
    let mut total = 0;
    let rounds = std::env::var("SPOOL_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    for round in 0..rounds {
        let before = if round == 0 {
            0
        } else {
            common::open(&data, LOG, config.clone()).1.end_offset()
        };
        // A kill right after opening (0 ms) now and then, else tens to hundreds of ms.
        let run_for = Duration::from_millis(match rng.random_range(0..6) {
            0 => 0,
            _ => rng.random_range(10..250),
        });
        let acked = run_child(&data, rng.random(), kill.segment_bytes, run_for, &stderr);
        if let Some(first) = acked.first() {
            assert_eq!(
                first.base, before,
                "round {round}: the child continues at the end"
            );
        }
        total += acked.len();
        check_after_kill(&data, kill, before, &acked, round);
    }
    let (_storage, log) = common::open(&data, LOG, config);
    eprintln!(
        "{}: {total} acknowledged appends, {} records in {} segments",
        kill.name,
        log.end_offset(),
        log.segment_count()
    );
    assert!(total > 0, "the child acknowledged nothing in any round");
}

/// Small segments, so kills land in rolls too (retries are checked here as well: a kill
/// inside a roll once lost the producer state).
#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    kill_rounds(&KillTest {
        name: "sigkill",
        segment_bytes: common::SMALL_SEGMENT,
        retry: true,
    });
}

/// One segment: every kill lands in an append, its fsync or recovery, never in a roll.
#[test]
fn idempotent_retry_after_sigkill_is_a_duplicate_with_the_original_offsets() {
    kill_rounds(&KillTest {
        name: "sigkill retry",
        segment_bytes: 64 * 1024 * 1024,
        retry: true,
    });
}

/// The crash window inside a roll: the new segment's `.log` exists but its producer
/// snapshot does not (a SIGKILL between creating the one and writing the other, before the
/// fix that writes the snapshot first; or a snapshot lost otherwise). A retry of the last
/// acknowledged batch must still be a duplicate, and the producer's next sequence must
/// still be accepted.
#[test]
fn idempotent_retry_survives_a_crash_between_segment_creation_and_producer_snapshot() {
    let _no_spawns = no_spawns();
    let dir = common::ram_tempdir(RAM_NEED);
    let config = common::small_config(Durability::Never);
    let mut acked = Vec::new();
    {
        let (_storage, log) = common::open(dir.path(), LOG, config.clone());
        let mut sequence = 0;
        // Stop at the append that rolled: it is the crash's unacknowledged batch.
        while log.segment_count() < 2 {
            let base = log.end_offset();
            let a = log
                .append(&child_batch(base, 3, sequence), stamp(sequence))
                .unwrap();
            acked.push((a.base_offset, sequence));
            sequence += 1;
        }
    }
    acked.pop();
    // The state the crash leaves: the new segment is empty, has no snapshot, and the
    // rolling batch was never written.
    let last = segment_files(dir.path()).pop().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(0)
        .unwrap();
    for ext in ["index", "timeindex", "producers"] {
        let _ = fs::remove_file(last.with_extension(ext));
    }
    let (_storage, log) = common::open(dir.path(), LOG, config);
    let &(base, sequence) = acked.last().unwrap();
    assert_eq!(log.end_offset(), base + 3);
    let again = log
        .append(&child_batch(base, 3, sequence), stamp(sequence))
        .expect("retry of the last acknowledged batch");
    assert!(again.duplicate);
    assert_eq!(again.base_offset, base);
    let next = log
        .append(&child_batch(base + 3, 3, sequence + 1), stamp(sequence + 1))
        .expect("the producer's next sequence");
    assert!(!next.duplicate);
    assert_eq!(next.base_offset, base + 3);
}
