//! A child process appending with `Durability::Always`, killed with SIGKILL at random
//! moments, and the crash window inside a roll: everything acknowledged as durable
//! survives, and an idempotent retry is still recognised.
//!
//! The kill test re-runs this test binary with `child_appender` as its only test; that
//! helper acts as the child when `SPOOL_CRASH_CHILD_DIR` names a data directory and returns
//! at once otherwise.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, RwLock, RwLockReadGuard, mpsc};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spool_storage::config::{Codec, Compression};
use spool_storage::{Durability, LogConfig, ProducerStamp, Record};

const LOG: &str = "crash/0";
/// Room the roll-crash test needs on a RAM disk.
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

const CHILD_DIR_ENV: &str = "SPOOL_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "SPOOL_CRASH_CHILD_SEED";
const CHILD_SEGMENT_ENV: &str = "SPOOL_CRASH_CHILD_SEGMENT_BYTES";
const CHILD_CODEC_ENV: &str = "SPOOL_CRASH_CHILD_ZSTD";
const PRODUCER: u64 = 7;

/// The child's log: `Always`, with segments of `segment_bytes`, its batches compressed
/// with zstd if `zstd`.
fn child_config(segment_bytes: u64, zstd: bool) -> LogConfig {
    let codec = if zstd { Codec::Zstd } else { Codec::None };
    LogConfig {
        segment_bytes,
        compression: Compression { codec, level: 0 },
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
    let zstd = std::env::var_os(CHILD_CODEC_ENV).is_some();
    let mut rng = StdRng::seed_from_u64(seed);
    let config = child_config(segment_bytes, zstd);
    let (_storage, log) = common::open(Path::new(&dir), LOG, config);
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
    kill: &KillTest,
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
        .env(CHILD_SEGMENT_ENV, kill.segment_bytes.to_string())
        .envs(kill.zstd.then_some((CHILD_CODEC_ENV, "1")))
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
    let (_storage, log) = common::open(dir, LOG, child_config(kill.segment_bytes, kill.zstd));
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
    /// Compress the child's batches with zstd.
    zstd: bool,
}

/// Rounds of: run the child in the same directory (it continues at the end), kill it with
/// SIGKILL after a random short time, reopen and check. `SPOOL_CRASH_ROUNDS` runs more.
fn kill_rounds(kill: &KillTest) {
    let _one_at_a_time = KILL_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("child.stderr");
    let data = dir.path().join("data");
    let config = child_config(kill.segment_bytes, kill.zstd);
    let mut rng = StdRng::seed_from_u64(common::seed(kill.name));
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
        let acked = run_child(&data, rng.random(), kill, run_for, &stderr);
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
    let compressed = common::segment_files(LOG, &data)
        .iter()
        .flat_map(|f| {
            let bytes = fs::read(f).unwrap();
            let (starts, _) = common::batch_starts(&bytes);
            starts
                .into_iter()
                .map(move |p| spool_storage::batch::check(&bytes[p..]).unwrap().version)
        })
        .filter(|&v| v == spool_storage::batch::COMPRESSED_VERSION)
        .count();
    assert_eq!(compressed > 0, kill.zstd, "{compressed} compressed batches");
}

/// Small segments, so kills land in rolls too (retries are checked here as well: a kill
/// inside a roll once lost the producer state).
#[test]
fn sigkill_never_loses_an_acknowledged_append() {
    kill_rounds(&KillTest {
        name: "sigkill",
        segment_bytes: common::SMALL_SEGMENT,
        retry: true,
        zstd: false,
    });
}

/// The same with every batch compressed: recovery of compressed batches after SIGKILL.
#[test]
fn sigkill_never_loses_an_acknowledged_compressed_append() {
    kill_rounds(&KillTest {
        name: "sigkill zstd",
        segment_bytes: common::SMALL_SEGMENT,
        retry: true,
        zstd: true,
    });
}

/// One segment: every kill lands in an append, its fsync or recovery, never in a roll.
#[test]
fn idempotent_retry_after_sigkill_is_a_duplicate_with_the_original_offsets() {
    kill_rounds(&KillTest {
        name: "sigkill retry",
        segment_bytes: 64 * 1024 * 1024,
        retry: true,
        zstd: false,
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
    let last = common::segment_files(LOG, dir.path()).pop().unwrap();
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
