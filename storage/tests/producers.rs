//! The idempotent producer table stays bounded whatever ids clients invent: expiry after
//! `producer_expiration` without appends, `max_producers` per log, the storage-wide cap,
//! and forgotten producers refused (never appended twice), across a reopen too.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spool_storage::{Durability, Error, Log, LogConfig, ProducerStamp, Storage, StorageConfig};

fn stamp(producer_id: u64, sequence: u64) -> ProducerStamp {
    ProducerStamp {
        producer_id,
        producer_epoch: 0,
        sequence,
    }
}

fn append(log: &Log, s: ProducerStamp) -> spool_storage::Result<spool_storage::Appended> {
    log.append(&[common::record_for(s.sequence, s.producer_id, 0)], s)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn config(max_producers: usize) -> LogConfig {
    LogConfig {
        max_producers,
        ..common::small_config(Durability::Never)
    }
}

/// Sizes of the log's producer snapshot files.
fn snapshot_sizes(log: &Log) -> Vec<u64> {
    std::fs::read_dir(log.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "producers"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect()
}

#[test]
fn random_producer_ids_stay_within_the_per_log_and_storage_caps() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(
        dir.path(),
        StorageConfig {
            max_producers: 150,
            ..StorageConfig::default()
        },
    )
    .unwrap();
    let a = storage.open_log("a", config(100)).unwrap();
    let b = storage.open_log("b", config(100)).unwrap();
    // A hostile client: 3,000 appends per log, each from a fresh producer id. Now and then
    // the filter of forgotten ids mistakes a fresh id for one: the producer picks another.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut mistaken = 0;
    for _ in 0..3000 {
        for log in [&a, &b] {
            loop {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match append(log, stamp(rng | 1, 0)) {
                    Ok(_) => break,
                    Err(Error::ForgottenProducer { .. }) => mistaken += 1,
                    Err(e) => panic!("append: {e}"),
                }
            }
        }
    }
    assert!(
        mistaken < 6000 / 20,
        "{mistaken} fresh ids taken for forgotten ones"
    );
    assert!(a.segment_count() > 3, "the logs rolled, writing snapshots");
    let (na, nb) = (a.producer_count(), b.producer_count());
    assert!(na <= 100 && nb <= 100, "per-log cap: {na}, {nb}");
    assert!(na + nb <= 150 + 2, "storage-wide cap: {na} + {nb}");
    // A snapshot holds at most the capped table plus the fixed-size filter (two 5 KiB
    // generations): not 3,000 producers.
    for size in snapshot_sizes(&a) {
        assert!(size < 100 * 120 + 12 * 1024, "snapshot of {size} bytes");
    }
    // The producer that just appended is still remembered: its retry is a duplicate.
    let last = stamp(rng | 1, 0);
    assert!(append(&b, last).unwrap().duplicate);
    // Closing one log returns its share of the storage-wide count to the others.
    drop(a);
    for i in 0..200u64 {
        // Ids the filter mistakes for forgotten ones are skipped, as a producer would.
        match append(&b, stamp(1_000_000 + i, 0)) {
            Ok(_) | Err(Error::ForgottenProducer { .. }) => {}
            Err(e) => panic!("append: {e}"),
        }
    }
    assert_eq!(b.producer_count(), 100);
}

#[test]
fn an_evicted_producer_is_refused_not_appended_twice_even_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let end_before = {
        let (_storage, log) = common::open(dir.path(), "l", config(2));
        append(&log, stamp(7, 0)).unwrap();
        append(&log, stamp(7, 1)).unwrap();
        append(&log, stamp(8, 0)).unwrap();
        append(&log, stamp(9, 0)).unwrap();
        assert_eq!(log.producer_count(), 2);
        let unknown = append(&log, stamp(7, 1)).unwrap_err();
        assert!(
            matches!(
                unknown,
                Error::UnknownProducer {
                    producer_id: 7,
                    sequence: 1
                }
            ),
            "{unknown}"
        );
        assert!(unknown.to_string().contains("new producer id"), "{unknown}");
        let forgotten = append(&log, stamp(7, 0)).unwrap_err();
        assert!(
            matches!(forgotten, Error::ForgottenProducer { producer_id: 7 }),
            "{forgotten}"
        );
        log.end_offset()
    };
    let (_storage, log) = common::open(dir.path(), "l", config(2));
    assert_eq!(
        log.end_offset(),
        end_before,
        "nothing was appended for the refusals"
    );
    assert!(matches!(
        append(&log, stamp(7, 0)),
        Err(Error::ForgottenProducer { .. })
    ));
    // Producers 8 and 9 survived the reopen; a new id is welcome.
    assert!(append(&log, stamp(9, 0)).unwrap().duplicate);
    assert!(!append(&log, stamp(10, 0)).unwrap().duplicate);
}

#[test]
fn an_idle_producer_expires_after_the_expiration_time() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3600);
    let (_storage, log) = common::open(
        dir.path(),
        "l",
        LogConfig {
            producer_expiration: Some(ttl),
            ..config(100)
        },
    );
    append(&log, stamp(5, 0)).unwrap();
    append(&log, stamp(6, 0)).unwrap();
    // Measured from the last append, by the broker's clock.
    assert_eq!(log.expire_producers(now_ms()), 0);
    assert_eq!(log.expire_producers(now_ms() + 3600 * 1000 + 1000), 2);
    assert_eq!(log.producer_count(), 0);
    assert!(matches!(
        append(&log, stamp(5, 1)),
        Err(Error::UnknownProducer { producer_id: 5, .. })
    ));
}
