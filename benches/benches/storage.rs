//! Criterion benchmarks of the storage engine, each next to a reference measured in the same
//! run on the same machine. `docs/perf.md` holds the results and how to read them.
//!
//! Run: `cargo bench -p spool-benches --bench storage -- --noplot`, then
//! `python3 benches/scripts/summary.py` for a table of the medians.
//!
//! # Layout
//! - `reference/memcpy`: memory copy bandwidth (a 64 MiB buffer, far larger than the caches).
//! - `reference/fdatasync_write/*`: the disk's fdatasync'd sequential write bandwidth, in the
//!   same directory as the logs: 1 MiB `pwrite` + `fdatasync` each, and 64 MiB then one
//!   `fdatasync`.
//! - `write_path/pwrite_vs_mmap/*`: copying 1 MiB batches into a preallocated file with
//!   `pwrite` or through a writable map, with and without a sync per batch. The only `unsafe`.
//! - `append/<durability>/<record size>x<batch>`: `Log::append` throughput in payload bytes
//!   (record values), default `LogConfig` (128 MiB segments) apart from the durability.
//! - `append_no_roll/never/*`: the same with a 2 GiB segment, so no segment roll (and its
//!   fdatasync of the closed segment) falls inside the measurement.
//! - `read/page_cache/*`: `Log::read(offset, 1000, 1 MiB)` sequentially over a pre-filled log.
//! - `recovery/1GiB/*` and `recovery/last_segment_index_lost`: `Storage::open` + `open_log`.
//!
//! Files live under `$SPOOL_BENCH_DIR` if set, else `std::env::temp_dir()`: it must be a real
//! block device (not tmpfs), or every fdatasync figure measures nothing.
//!
//! A failing step panics with its name: criterion gives a benchmark no error channel.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spool_storage::config::MAX_SEGMENT_BYTES;
use spool_storage::{Durability, Log, LogConfig, ProducerStamp, Record, Storage, StorageConfig};
use tempfile::TempDir;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;
/// Timestamps of the benchmark records: fixed, so runs are comparable.
const TS: i64 = 1_700_000_000_000;
/// Append benchmarks cut their log back (untimed) once it grows past this, to bound disk use.
const APPEND_CAP: u64 = GIB;

fn bench_root() -> PathBuf {
    std::env::var_os("SPOOL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("spool-bench-")
        .tempdir_in(bench_root())
        .expect("create a temporary directory under the bench root")
}

/// `count` records with `value_len`-byte values and no key. Each value is its own slice of one
/// buffer, so encoding reads `value_len * count` distinct bytes, not one hot cache line.
fn records(value_len: usize, count: usize) -> Vec<Record> {
    let all: Vec<u8> = (0..value_len * count).map(|i| (i % 251) as u8).collect();
    let all = Bytes::from(all);
    (0..count)
        .map(|i| Record {
            key: Bytes::new(),
            value: all.slice(i * value_len..(i + 1) * value_len),
            headers: Vec::new(),
            timestamp_ms: TS + i as i64,
        })
        .collect()
}

fn size_name(value_len: usize) -> String {
    if value_len.is_multiple_of(KIB) {
        format!("{}KiB", value_len / KIB)
    } else {
        format!("{value_len}B")
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn open_storage(dir: &Path) -> Storage {
    Storage::open(dir, StorageConfig::default()).expect("open storage")
}

fn open_log(storage: &Storage, name: &str, config: LogConfig) -> std::sync::Arc<Log> {
    storage.open_log(name, config).expect("open log")
}

/// Appends batches of 1000 `value_len`-byte records until the log holds at least `bytes`.
/// With `advance_ts`, each batch's timestamps follow the previous batch's, as a producer's
/// clock would; without it every batch repeats the same timestamps.
fn fill(log: &Log, value_len: usize, bytes: u64, advance_ts: bool) {
    let mut batch = records(value_len, 1000);
    while log.size_bytes() < bytes {
        log.append(&batch, ProducerStamp::default())
            .expect("append while filling");
        if advance_ts {
            for r in &mut batch {
                r.timestamp_ms += 1000;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// References

fn reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let len = 64 * MIB;
    let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut dst = vec![1u8; len];
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    drop((src, dst));

    let dir = temp_dir();
    let path = dir.path().join("reference.dat");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create the reference file");
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 253) as u8).collect();
    let reset = |file: &File| {
        file.set_len(0).expect("truncate the reference file");
        file.sync_all().expect("fsync the reference file");
    };

    // One iteration: append a 1 MiB chunk with pwrite and fdatasync it (like an `Always`
    // append of a 1 MiB batch). The file is cut back untimed every 256 MiB.
    g.throughput(Throughput::Bytes(MIB as u64));
    let mut pos = 0u64;
    g.bench_function("fdatasync_write/1MiB_chunks_fdatasync_each", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                file.write_all_at(&chunk, pos).expect("pwrite");
                file.sync_data().expect("fdatasync");
                pos += MIB as u64;
            }
            let took = start.elapsed();
            if pos >= 256 * MIB as u64 {
                reset(&file);
                pos = 0;
            }
            took
        })
    });

    // One iteration: 64 MiB in 1 MiB pwrites, then one fdatasync (the disk's streaming rate).
    g.throughput(Throughput::Bytes(64 * MIB as u64));
    g.bench_function("fdatasync_write/64MiB_then_fdatasync", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                reset(&file);
                let start = Instant::now();
                for i in 0..64u64 {
                    file.write_all_at(&chunk, i * MIB as u64).expect("pwrite");
                }
                file.sync_data().expect("fdatasync");
                took += start.elapsed();
            }
            took
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Write path: pwrite or a writable map

#[allow(unsafe_code)]
fn pwrite_vs_mmap(c: &mut Criterion) {
    const FILE_LEN: usize = 64 * MIB;
    let dir = temp_dir();
    let path = dir.path().join("write_path.dat");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create the write-path file");
    // Preallocate with real blocks: write zeros over the whole length and sync, so neither
    // path allocates and both overwrite the same resident, clean pages.
    file.set_len(FILE_LEN as u64).expect("set_len");
    let zeros = vec![0u8; MIB];
    for i in 0..FILE_LEN / MIB {
        file.write_all_at(&zeros, (i * MIB) as u64)
            .expect("write zeros");
    }
    file.sync_all().expect("fsync the write-path file");
    // SAFETY: the file is private to this benchmark (created just above in a fresh temporary
    // directory, opened by no one else), its FILE_LEN bytes are allocated (written with zeros
    // and synced above, so a store cannot fault for a missing block), and it is never
    // truncated or resized while this map is alive (the map is dropped before `file` and `dir`
    // at the end of this function). No `&[u8]` of the mapped range is held across a store:
    // the only access is `copy_from_slice` through the `MmapMut` itself.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file).expect("map the file for writing") };

    let batch: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let mut g = c.benchmark_group("write_path/pwrite_vs_mmap");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(MIB as u64));
    let next = |pos: &mut usize| {
        let at = *pos;
        *pos = (*pos + MIB) % FILE_LEN;
        at
    };

    let mut pos = 0;
    g.bench_function("pwrite", |b| {
        b.iter(|| {
            let at = next(&mut pos);
            file.write_all_at(&batch, at as u64).expect("pwrite");
        })
    });
    let mut pos = 0;
    g.bench_function("mmap", |b| {
        b.iter(|| {
            let at = next(&mut pos);
            map[at..at + MIB].copy_from_slice(black_box(&batch));
        })
    });
    let mut pos = 0;
    g.bench_function("pwrite_fdatasync", |b| {
        b.iter(|| {
            let at = next(&mut pos);
            file.write_all_at(&batch, at as u64).expect("pwrite");
            file.sync_data().expect("fdatasync");
        })
    });
    let mut pos = 0;
    g.bench_function("mmap_msync", |b| {
        b.iter(|| {
            let at = next(&mut pos);
            map[at..at + MIB].copy_from_slice(black_box(&batch));
            map.flush_range(at, MIB).expect("msync");
        })
    });
    g.finish();
    drop(map);
    drop(file);
}

// ---------------------------------------------------------------------------------------
// Appends

fn append(c: &mut Criterion) {
    let policies = [
        ("always", Durability::Always),
        (
            "interval_10ms",
            Durability::Interval(Duration::from_millis(10)),
        ),
        ("never", Durability::Never),
    ];
    for (policy, durability) in policies {
        let mut g = c.benchmark_group(format!("append/{policy}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2));
        for value_len in [100, KIB] {
            for batch_len in [1, 100, 1000] {
                let config = LogConfig {
                    durability,
                    retention_bytes: Some(256 * MIB as u64),
                    ..LogConfig::default()
                };
                let id = format!("{}x{batch_len}", size_name(value_len));
                bench_append(&mut g, &id, value_len, batch_len, config);
            }
        }
        g.finish();
    }

    // The same appends with no segment roll inside the measurement: a roll fdatasyncs the
    // closed segment whatever the durability, which `never` would otherwise pay every 128 MiB.
    let mut g = c.benchmark_group("append_no_roll/never");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for value_len in [100, KIB] {
        for batch_len in [100, 1000] {
            let config = LogConfig {
                durability: Durability::Never,
                segment_bytes: MAX_SEGMENT_BYTES,
                ..LogConfig::default()
            };
            let id = format!("{}x{batch_len}", size_name(value_len));
            bench_append(&mut g, &id, value_len, batch_len, config);
        }
    }
    g.finish();
}

/// One append benchmark on a fresh log. Untimed between samples: logs with retention are
/// cut back once past [`APPEND_CAP`]; logs without it are deleted and started afresh.
fn bench_append(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    value_len: usize,
    batch_len: usize,
    config: LogConfig,
) {
    let dir = temp_dir();
    let storage = open_storage(dir.path());
    let batch = records(value_len, batch_len);
    let mut generation = 0;
    let mut log = open_log(&storage, "append-0", config.clone());
    g.throughput(Throughput::Bytes((value_len * batch_len) as u64));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                log.append(&batch, ProducerStamp::default())
                    .expect("append");
            }
            let took = start.elapsed();
            if log.size_bytes() > APPEND_CAP {
                if config.retention_bytes.is_some() {
                    log.enforce_retention(now_ms()).expect("enforce retention");
                } else {
                    storage.delete_log(&log).expect("delete log");
                    generation += 1;
                    log = open_log(&storage, &format!("append-{generation}"), config.clone());
                }
            }
            took
        })
    });
}

// ---------------------------------------------------------------------------------------
// Reads

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read/page_cache");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (value_len, total) in [(100, 64 * MIB as u64), (KIB, 256 * MIB as u64)] {
        let dir = temp_dir();
        let storage = open_storage(dir.path());
        let config = LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        };
        let log = open_log(&storage, "read", config);
        fill(&log, value_len, total, true);
        let end = log.end_offset();
        // Batches of 1000 records and reads of at most 1000 records and 1 MiB of payload:
        // every read returns exactly one whole batch, so the bytes per iteration are fixed.
        let first = log.read(0, 1000, MIB).expect("read");
        assert_eq!(first.len(), 1000, "a read returns one whole batch");
        drop(first);
        g.throughput(Throughput::Bytes((value_len * 1000) as u64));
        let mut next = 0u64;
        g.bench_function(format!("{}x1000", size_name(value_len)), |b| {
            b.iter(|| {
                if next >= end {
                    next = 0;
                }
                let records = log.read(next, 1000, MIB).expect("read");
                next += records.len() as u64;
                records
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Recovery

fn recovery(c: &mut Criterion) {
    let dir = temp_dir();
    let name = "recovery";
    let config = LogConfig {
        durability: Durability::Never,
        ..LogConfig::default()
    };
    let end = {
        let storage = open_storage(dir.path());
        let log = open_log(&storage, name, config.clone());
        fill(&log, KIB, GIB, true);
        log.close().expect("close the log");
        log.end_offset()
    };
    let log_dir = dir.path().join(name);
    // The first open trims the active segment's preallocated tail: do it untimed, so every
    // timed open below starts from the same files.
    report_once("after fill", dir.path(), name, &config);

    let mut g = c.benchmark_group("recovery/1GiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("clean_warm", |b| {
        b.iter_custom(|iters| time_opens(iters, dir.path(), name, &config, || {}))
    });
    g.bench_function("clean_cold", |b| {
        b.iter_custom(|iters| time_opens(iters, dir.path(), name, &config, || evict(&log_dir)))
    });
    g.bench_function("unclean_tail", |b| {
        b.iter_custom(|iters| {
            time_opens(iters, dir.path(), name, &config, || {
                tear_tail(&log_dir, end, false)
            })
        })
    });
    g.finish();
    tear_tail(&log_dir, end, false);
    report_once("unclean_tail", dir.path(), name, &config);
    drop(dir);

    // Worst case of the tail scan: the last segment's offset index lost, so recovery checks
    // every batch of a nearly full 128 MiB segment.
    let dir = temp_dir();
    let end = {
        let storage = open_storage(dir.path());
        let log = open_log(&storage, name, config.clone());
        fill(&log, KIB, 120 * MIB as u64, true);
        log.close().expect("close the log");
        log.end_offset()
    };
    let log_dir = dir.path().join(name);
    report_once("after fill", dir.path(), name, &config);
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("last_segment_120MiB_index_lost", |b| {
        b.iter_custom(|iters| {
            time_opens(iters, dir.path(), name, &config, || {
                tear_tail(&log_dir, end, true)
            })
        })
    });
    g.finish();
    tear_tail(&log_dir, end, true);
    report_once("last_segment_120MiB_index_lost", dir.path(), name, &config);
    drop(dir);

    // Timestamps that stop increasing (a producer's clock set back, or one timestamp for
    // everything): the time index's last entry stays at the segment's first batch, and
    // recovery scans from there, not from the last offset entry.
    let dir = temp_dir();
    {
        let storage = open_storage(dir.path());
        let log = open_log(&storage, name, config.clone());
        fill(&log, KIB, 120 * MIB as u64, false);
        log.close().expect("close the log");
    }
    report_once("after fill", dir.path(), name, &config);
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("last_segment_120MiB_flat_timestamps", |b| {
        b.iter_custom(|iters| time_opens(iters, dir.path(), name, &config, || {}))
    });
    g.finish();
    report_once(
        "last_segment_120MiB_flat_timestamps",
        dir.path(),
        name,
        &config,
    );
}

/// Times `iters` runs of `Storage::open` + `open_log`, each after an untimed `prepare`.
fn time_opens(
    iters: u64,
    root: &Path,
    name: &str,
    config: &LogConfig,
    mut prepare: impl FnMut(),
) -> Duration {
    let mut took = Duration::ZERO;
    for _ in 0..iters {
        prepare();
        let start = Instant::now();
        let storage = open_storage(root);
        let log = open_log(&storage, name, config.clone());
        took += start.elapsed();
        black_box(log.end_offset());
        drop(log);
        drop(storage);
    }
    took
}

/// Opens the log once, untimed, and prints what recovery found (for `docs/perf.md`).
fn report_once(what: &str, root: &Path, name: &str, config: &LogConfig) {
    let storage = open_storage(root);
    let log = open_log(&storage, name, config.clone());
    eprintln!(
        "recovery {what}: {} bytes in {} segments, {:?}",
        log.size_bytes(),
        log.segment_count(),
        log.open_report()
    );
}

/// Drops the log directory's files from the page cache (synced first: only clean pages can
/// be dropped), so the next open reads from the disk. Touches no other process's files.
fn evict(log_dir: &Path) {
    for entry in fs::read_dir(log_dir).expect("list the log directory") {
        let path = entry.expect("list the log directory").path();
        let file = File::open(&path).expect("open a log file");
        file.sync_all().expect("fsync a log file");
        rustix::fs::fadvise(&file, 0, None::<NonZeroU64>, rustix::fs::Advice::DontNeed)
            .expect("fadvise DONTNEED");
    }
}

/// The last segment's files (`.log`, `.index`) in `log_dir`.
fn last_segment(log_dir: &Path) -> (PathBuf, PathBuf) {
    let mut logs: Vec<PathBuf> = fs::read_dir(log_dir)
        .expect("list the log directory")
        .map(|e| e.expect("list the log directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let log = logs.pop().expect("a segment");
    let index = log.with_extension("index");
    (log, index)
}

/// Simulates a crash in the middle of an append: after the last valid batch, a batch header
/// claiming 1 MiB at offset `end`, 256 KiB of its bytes, then 4 MiB of preallocated zeros.
/// With `lose_index`, the last segment's offset index is emptied too. Synced, so the damage
/// is what the disk would hold.
fn tear_tail(log_dir: &Path, end: u64, lose_index: bool) {
    let (log_path, index_path) = last_segment(log_dir);
    let file = OpenOptions::new()
        .write(true)
        .open(&log_path)
        .expect("open the last segment");
    let valid = file.metadata().expect("stat the last segment").len();
    let mut torn = vec![0xabu8; 256 * KIB];
    torn[0..8].copy_from_slice(&end.to_le_bytes());
    torn[8..12].copy_from_slice(&((MIB - 12) as u32).to_le_bytes());
    torn[12..16].copy_from_slice(b"SPLB");
    torn[16] = 1;
    file.write_all_at(&torn, valid)
        .expect("write the torn batch");
    file.set_len(valid + (256 * KIB + 4 * MIB) as u64)
        .expect("extend with zeros");
    file.sync_all().expect("fsync the last segment");
    if lose_index {
        let index = OpenOptions::new()
            .write(true)
            .open(&index_path)
            .expect("open the index");
        index.set_len(0).expect("empty the index");
        index.sync_all().expect("fsync the index");
    }
}

criterion_group!(benches, reference, pwrite_vs_mmap, append, read, recovery);
criterion_main!(benches);
