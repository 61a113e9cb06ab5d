//! A start after a clean shutdown trusts the data directory (no fsync per log, nothing to
//! cut), only when the marker is intact, and only once: the marker is gone before the
//! first write, so a crash right after a clean restart is recovered in full.

mod common;

use std::fs;
use std::path::Path;

use spool_storage::faults::{self, Op};
use spool_storage::{Durability, Storage, StorageConfig, clean};

const LOG: &str = "t/0";

fn config() -> spool_storage::LogConfig {
    common::small_config(Durability::Never)
}

fn log_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.join(LOG))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Writes `batches` batches of 3 records, closes the log and, if `clean`, leaves the marker.
fn write_and_stop(dir: &Path, batches: u64, salt: u64, clean: bool) {
    let (storage, log) = common::open(dir, LOG, config());
    assert!(
        !dir.join(clean::FILE).exists(),
        "the marker is gone once open"
    );
    for _ in 0..batches {
        common::append_batch(&log, 3, salt, 1);
    }
    log.close().unwrap();
    if clean {
        storage.mark_clean().unwrap();
        assert!(dir.join(clean::FILE).exists());
    }
}

#[test]
fn a_clean_stop_leaves_nothing_to_recover_and_the_next_start_syncs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_and_stop(dir.path(), 200, 1, true);
    let files = log_files(dir.path());
    let active = files.iter().rfind(|(n, _)| n.ends_with(".log")).unwrap();
    let (starts, data_end) = common::batch_starts(&active.1);
    assert!(!starts.is_empty());
    assert_eq!(active.1.len(), data_end, "close cut the preallocated tail");

    // Every fsync of the data directory fails: a trusted start needs none.
    faults::fail(dir.path(), Op::Sync, u64::MAX, 5);
    let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
    assert!(storage.clean_start());
    assert!(!dir.path().join(clean::FILE).exists());
    let log = storage.open_log(LOG, config()).unwrap();
    faults::clear(dir.path());
    assert_eq!(log.end_offset(), 600);
    assert_eq!(log.open_report().dropped_bytes, 0);
    assert_eq!(log_files(dir.path()), files, "opening rewrote nothing");
    let want: Vec<_> = (0..600).map(|o| common::record_for(o, 1, 1)).collect();
    common::assert_records(&common::read_all(&log, 0), 0, &want);
}

#[test]
fn a_start_without_an_intact_marker_syncs_the_file_system() {
    for damage in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_and_stop(dir.path(), 20, 1, damage);
        if damage {
            let path = dir.path().join(clean::FILE);
            let mut b = fs::read(&path).unwrap();
            b[0] ^= 1;
            fs::write(&path, b).unwrap();
        }
        faults::fail(dir.path(), Op::Sync, u64::MAX, 5);
        let e = Storage::open(dir.path(), StorageConfig::default()).err();
        faults::clear(dir.path());
        let e = e.expect("an untrusted start syncs before trusting anything");
        assert!(e.to_string().contains("syncfs"), "{e}");
        assert!(!dir.path().join(clean::FILE).exists(), "damaged: {damage}");
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        assert!(!storage.clean_start(), "damaged marker: {damage}");
        let log = storage.open_log(LOG, config()).unwrap();
        assert_eq!(log.end_offset(), 60);
    }
}

#[test]
fn a_crash_right_after_a_clean_restart_is_recovered_in_full() {
    let dir = tempfile::tempdir().unwrap();
    write_and_stop(dir.path(), 20, 1, true);
    {
        let (storage, log) = common::open(dir.path(), LOG, config());
        assert!(storage.clean_start());
        common::append_batch(&log, 3, 2, 1);
        // A crash: no close, no marker, and a torn batch after the last one.
        let active = fs::read_dir(dir.path().join(LOG))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max()
            .unwrap();
        let data = fs::read(&active).unwrap();
        let (starts, end) = common::batch_starts(&data);
        let last = *starts.last().unwrap();
        let torn = data[last..end].to_vec();
        let f = fs::OpenOptions::new().write(true).open(&active).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &torn[..torn.len() / 2], end as u64).unwrap();
    }
    let (storage, log) = common::open(dir.path(), LOG, config());
    assert!(
        !storage.clean_start(),
        "the marker was used up by the last start"
    );
    assert_eq!(log.end_offset(), 63);
    assert!(
        log.open_report().dropped_bytes > 0,
        "the torn batch was cut"
    );
    let mut want: Vec<_> = (0..60).map(|o| common::record_for(o, 1, 1)).collect();
    want.extend((60..63).map(|o| common::record_for(o, 2, 1)));
    common::assert_records(&common::read_all(&log, 0), 0, &want);
}
