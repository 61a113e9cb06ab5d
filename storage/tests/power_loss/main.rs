//! Simulated power loss: a log is driven through appends, syncs, rolls, retention,
//! truncations and restarts under each fsync policy while every change the engine makes to
//! the disk is recorded (`spool_storage::journal`); then, at random points of that journal,
//! the disk a power cut could leave is rebuilt (`image.rs`) and recovered. A kill -9 keeps
//! the page cache; this test does not.
//!
//! After every recovery: opening succeeds (and never panics); every record below the
//! durable offset the log reported before the cut is there and intact; every record served
//! is one that was appended at that offset, byte for byte; nothing a returned truncation
//! removed comes back; damage is reported only above the durable offset.
//!
//! `SPOOL_POWER_LOSS_SEEDS` sets the number of seeds (CI runs the default; a long run by
//! hand: `SPOOL_POWER_LOSS_SEEDS=2000 cargo test -p spool-storage --release --test power_loss`).

mod image;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use spool_storage::batch::{ProducerStamp, Record};
use spool_storage::error::Error;
use spool_storage::journal::{self, Change};
use spool_storage::{Durability, Log, LogConfig, Storage, StorageConfig};

use image::{Disk, Rng, files_under};

const LOG: &str = "topics/t/0";
/// Seeds run by default: a few seconds in a debug build.
const DEFAULT_SEEDS: u64 = 32;
/// Crash images rebuilt and recovered per seed.
const CUTS_PER_SEED: usize = 12;
const STEPS: usize = 160;

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: spool_storage::config::MIN_SEGMENT_BYTES,
        index_interval_bytes: 512,
        index_persist_bytes: 2048,
        preallocate_bytes: 16 * 1024,
        retention_bytes: Some(160 * 1024),
        durability,
        ..LogConfig::default()
    }
}

fn policy(seed: u64) -> Durability {
    match seed % 3 {
        0 => Durability::Always,
        1 => Durability::Interval(Duration::from_millis(2)),
        _ => Durability::Never,
    }
}

/// A record whose bytes all follow from `id`: key = id, value of a length and content
/// derived from it (no zeros, so a cut never looks like a valid record by accident).
fn record(id: u64) -> Record {
    let len = 40 + (id.wrapping_mul(2_654_435_761) % 900) as usize;
    let value: Vec<u8> = (0..len)
        .map(|i| 1 + ((id as usize).wrapping_mul(131).wrapping_add(i * 7) % 251) as u8)
        .collect();
    Record {
        key: Bytes::copy_from_slice(&id.to_le_bytes()),
        value: Bytes::from(value),
        headers: Vec::new(),
        timestamp_ms: 1_000 + id as i64,
    }
}

/// What the test knew after each step of the run.
struct Step {
    /// Journal length after the step: a cut at or after it happened after the step.
    pos: usize,
    /// The durable offset the log reported after the step.
    durable: u64,
    /// The log's start after the step.
    start: u64,
    /// Ids of the records at offsets `0..end` (an id is appended once, at one offset).
    ids: Vec<u64>,
    /// A truncation that returned in this step: (offset, first id appended after it).
    truncated: Option<(u64, u64)>,
}

struct Run {
    changes: Vec<Change>,
    steps: Vec<Step>,
    config: LogConfig,
}

fn open(root: &Path, config: &LogConfig) -> (Storage, Arc<Log>) {
    let storage = Storage::open(root, StorageConfig::default()).expect("open storage");
    let log = storage.open_log(LOG, config.clone()).expect("open log");
    (storage, log)
}

/// Drives a log through `STEPS` random steps under `seed`'s policy, recording the journal.
fn drive(seed: u64, root: &Path) -> Run {
    let config = config(policy(seed));
    let mut rng = Rng::new(seed);
    let journal = journal::record(root);
    let (mut storage, mut log) = open(root, &config);
    let mut ids: Vec<u64> = Vec::new();
    let mut batch_starts: Vec<u64> = Vec::new();
    let mut next_id = 0u64;
    let mut steps = Vec::new();
    for _ in 0..STEPS {
        let mut truncated = None;
        match rng.below(100) {
            0..70 => {
                let n = 1 + rng.below(4);
                let records: Vec<Record> = (next_id..next_id + n).map(record).collect();
                let a = log
                    .append(&records, ProducerStamp::default())
                    .expect("append");
                assert_eq!(a.base_offset, ids.len() as u64);
                batch_starts.push(a.base_offset);
                ids.extend(next_id..next_id + n);
                next_id += n;
            }
            70..80 => log.sync().expect("sync"),
            80..86 => {
                log.enforce_retention(i64::MAX).expect("retention");
            }
            86..92 => {
                let start = log.start_offset();
                let candidates: Vec<u64> = batch_starts
                    .iter()
                    .copied()
                    .filter(|&b| b >= start)
                    .collect();
                if let Some(&at) =
                    candidates.get(rng.below(candidates.len().max(1) as u64) as usize)
                {
                    log.truncate(at).expect("truncate");
                    ids.truncate(at as usize);
                    batch_starts.retain(|&b| b < at);
                    truncated = Some((at, next_id));
                }
            }
            92..96 => {
                // A graceful restart, marker and all.
                log.close().expect("close");
                storage.mark_clean().expect("mark clean");
                drop(log);
                drop(storage);
                (storage, log) = open(root, &config);
            }
            _ => {
                // A process crash: the page cache survives, recovery runs on reopen.
                drop(log);
                drop(storage);
                (storage, log) = open(root, &config);
            }
        }
        assert_eq!(log.end_offset(), ids.len() as u64);
        steps.push(Step {
            // The durable offset first: the sync that moved it is recorded before it moved.
            durable: log.durable_offset(),
            pos: journal.len(),
            start: log.start_offset(),
            ids: ids.clone(),
            truncated,
        });
    }
    drop(log);
    drop(storage);
    journal::stop(&journal);
    let changes = journal.changes();

    // The journal saw every change: replayed in full, it is the directory the run left.
    let mut disk = Disk::default();
    for c in &changes {
        disk.apply(c);
    }
    assert_eq!(
        disk.live_files().keys().collect::<Vec<_>>(),
        files_under(root).keys().collect::<Vec<_>>(),
        "seed {seed}: the journal names every file"
    );
    assert!(
        disk.live_files() == files_under(root),
        "seed {seed}: the journal holds every byte written"
    );
    Run {
        changes,
        steps,
        config,
    }
}

/// What one recovered image held, so the run can show its cuts were not all trivial.
struct Outcome {
    /// Records below the durable offset found intact.
    durable_kept: u64,
    /// Records the process had written before the cut that the image lost.
    lost: u64,
}

/// Cuts the power after `cut` changes of `run`, recovers the image and checks it.
fn check_cut(seed: u64, run: &Run, cut: usize, rng: &mut Rng) -> Outcome {
    let mut disk = Disk::default();
    for c in &run.changes[..cut] {
        disk.apply(c);
    }
    let dir = tempfile::tempdir().unwrap();
    disk.crash_image(rng, dir.path());
    let what = format!(
        "seed {seed} ({:?}), cut after change {cut}",
        run.config.durability
    );

    // The last step complete before the cut, and the one in progress at it.
    let done = run.steps.iter().rposition(|s| s.pos <= cut);
    let in_progress = done.map_or(0, |d| d + 1);
    let (durable, ids): (u64, &[u64]) = match done {
        Some(d) => (run.steps[d].durable, &run.steps[d].ids),
        None => (0, &[]),
    };
    // Retention or a truncation under way may have taken effect, wholly or in part.
    let step = run.steps.get(in_progress);
    let start_bound = step.or(done.map(|d| &run.steps[d])).map_or(0, |s| s.start);
    let must_keep_below = match step.and_then(|s| s.truncated) {
        Some((at, _)) => durable.min(at),
        None => durable,
    };
    let returned_truncations: Vec<(u64, u64)> = run.steps[..in_progress]
        .iter()
        .filter_map(|s| s.truncated)
        .collect();

    let (_storage, log) = open(dir.path(), &run.config);
    let start = log.start_offset();
    let end = log.end_offset();
    assert!(
        start <= start_bound,
        "{what}: start {start} is past {start_bound}"
    );
    assert!(
        end >= must_keep_below,
        "{what}: the log ends at {end}, below the durable offset {must_keep_below}"
    );
    let mut next = start;
    let mut durable_kept = 0;
    while next < end {
        match log.read(next, 64, 1 << 20) {
            Ok(records) => {
                for r in &records {
                    let id = u64::from_le_bytes(r.key[..].try_into().expect("an 8-byte key"));
                    let want = record(id);
                    assert_eq!(
                        (&r.key, &r.value),
                        (&want.key, &want.value),
                        "{what}: record at {} is not what was appended",
                        r.offset
                    );
                    if r.offset < must_keep_below {
                        assert_eq!(
                            ids.get(r.offset as usize),
                            Some(&id),
                            "{what}: durable offset {} holds another record",
                            r.offset
                        );
                        durable_kept += 1;
                    }
                    for &(at, first_after) in &returned_truncations {
                        assert!(
                            !(r.offset >= at && id < first_after),
                            "{what}: record {id} at {} came back after a truncation at {at}",
                            r.offset
                        );
                    }
                }
                next = records.last().map_or(end, |r| r.offset + 1);
            }
            Err(Error::Corrupt { offsets, .. }) => {
                assert!(
                    next >= must_keep_below,
                    "{what}: damage at {next}, below the durable offset {must_keep_below}"
                );
                match offsets {
                    Some(lost) if lost.end > next => next = lost.end,
                    _ => break,
                }
            }
            Err(e) => panic!("{what}: read at {next} failed: {e}"),
        }
    }
    assert!(
        next >= must_keep_below,
        "{what}: reads stopped at {next}, below the durable offset {must_keep_below}"
    );
    Outcome {
        durable_kept,
        lost: (ids.len() as u64).saturating_sub(end),
    }
}

fn seeds() -> u64 {
    std::env::var("SPOOL_POWER_LOSS_SEEDS")
        .ok()
        .map(|s| s.parse().expect("SPOOL_POWER_LOSS_SEEDS is a number"))
        .unwrap_or(DEFAULT_SEEDS)
}

/// Panics on any thread (a background flusher's too), counted by a hook.
static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn every_durable_append_survives_any_power_cut_and_nothing_corrupt_is_served() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));
    let seeds = seeds();
    let (mut cuts, mut kept, mut lossy) = (0u64, 0u64, 0u64);
    for seed in 0..seeds {
        let root = tempfile::tempdir().unwrap();
        let run = drive(seed, root.path());
        let mut rng = Rng::new(seed ^ 0xC0FFEE);
        let n = run.changes.len();
        // Random points, plus the very end (every change made, none synced after).
        let points: Vec<usize> = (0..CUTS_PER_SEED)
            .map(|_| rng.below(n as u64 + 1) as usize)
            .chain([n])
            .collect();
        for cut in points {
            let o = check_cut(seed, &run, cut, &mut rng);
            cuts += 1;
            kept += o.durable_kept;
            lossy += u64::from(o.lost > 0);
        }
    }
    // The cuts exercised both sides: durable records to keep, and unsynced ones lost.
    assert!(kept > 0, "no cut had a durable record to check");
    assert!(
        lossy > 0,
        "no cut lost an unsynced record: the images drop nothing"
    );
    assert_eq!(
        PANICS.load(Ordering::Relaxed),
        0,
        "a thread panicked (see above)"
    );
    eprintln!(
        "{cuts} power cuts over {seeds} seeds: {kept} durable records checked, {lossy} images lost unsynced records"
    );
}
