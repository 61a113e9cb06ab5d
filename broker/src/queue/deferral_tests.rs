//! Records due far ahead: deferred to the delay store, kept deferred across restarts and
//! checkpoints without reading them again, and delivered no earlier than their time.

use std::collections::BTreeSet;
use std::sync::Arc;

use spool_proto::v1;
use spool_storage::ProducerStamp;

use super::Queues;
use super::leasing::{Limit, Queue};
use super::store::Event;
use super::tests::{open, settle_each};
use crate::registry::{Registry, Topic};

const NOW: i64 = 1_800_000_000_000;

/// Appends `n` records due at `deliver_at_ms` (0 = at once) to partition 0 of `t`.
fn append(topic: &Topic, n: usize, deliver_at_ms: i64) {
    let records: Vec<v1::Record> = (0..n)
        .map(|i| v1::Record {
            value: format!("v{i}").into(),
            timestamp_ms: NOW - 1_000,
            deliver_at_ms,
            ..v1::Record::default()
        })
        .collect();
    for chunk in records.chunks(10_000) {
        let (records, _) =
            crate::service::convert::to_storage(chunk.to_vec(), 1 << 20, NOW).unwrap();
        topic.partitions[0]
            .log
            .append(&records, ProducerStamp::default())
            .unwrap();
    }
}

/// Topic `t`, one partition.
fn topic_t(registry: &Registry) -> Arc<Topic> {
    let settings = registry.settings_for(&v1::TopicConfig::default()).unwrap();
    registry.create("t", 1, settings).unwrap()
}

fn create(registry: &Registry, queues: &Queues, max_leased: u32) -> Arc<Queue> {
    let req = v1::CreateQueueRequest {
        topic: "t".into(),
        queue: "q".into(),
        config: Some(v1::QueueConfig {
            max_leased,
            ..v1::QueueConfig::default()
        }),
        start: None,
    };
    queues.create(registry, &req).unwrap()
}

/// One look at `now`, made durable; returns the offsets leased.
fn look(queues: &Queues, q: &Queue, topic: &Topic, now: i64) -> Vec<u64> {
    let leased = q
        .lease(topic, Limit::records(100_000), 60_000, "w", now)
        .unwrap();
    queues.persist(&leased.events).unwrap();
    leased
        .deliveries
        .iter()
        .map(|d| d.record.as_ref().unwrap().offset)
        .collect()
}

/// Leases and acks until a look at `now` finds nothing; returns what was acked.
fn drain(queues: &Queues, q: &Queue, topic: &Topic, now: i64) -> Vec<u64> {
    let mut acked = Vec::new();
    loop {
        let leased = q
            .lease(topic, Limit::records(100_000), 60_000, "w", now)
            .unwrap();
        queues.persist(&leased.events).unwrap();
        if leased.deliveries.is_empty() && leased.next_due_ms.is_none_or(|d| d > now) {
            return acked;
        }
        let settlements = settle_each(&leased.deliveries, v1::SettleAction::Ack);
        acked.extend(settlements.iter().map(|s| s.offset));
        let (_, events) = q.settle(&settlements, now, 0);
        queues.persist(&events).unwrap();
    }
}

#[test]
fn a_restart_finds_again_the_records_that_waited_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_s, registry, queues) = open(dir.path());
        let topic = topic_t(&registry);
        // Offset 0 is due in a second (too soon to defer: it waits in memory), 1 at once.
        append(&topic, 1, NOW + 1_000);
        append(&topic, 1, 0);
        let q = create(&registry, &queues, 0);
        assert_eq!(look(&queues, &q, &topic, NOW), [1]);
    }
    let (_s, registry, queues) = open(dir.path());
    let (q, topic) = (queues.get("t", "q").unwrap(), registry.get("t").unwrap());
    assert!(look(&queues, &q, &topic, NOW + 500).is_empty());
    assert_eq!(look(&queues, &q, &topic, NOW + 1_000), [0]);
}

#[test]
fn far_delayed_records_do_not_hold_up_later_ones_and_stay_deferred_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let at = NOW + 60_000;
    {
        let (_s, registry, queues) = open(dir.path());
        let topic = topic_t(&registry);
        // Far more delayed records than a partition tracks in memory (2 × max_leased).
        append(&topic, 1_000, at);
        append(&topic, 5, 0);
        let q = create(&registry, &queues, 10);
        assert_eq!(
            drain(&queues, &q, &topic, NOW),
            (1_000..1_005).collect::<Vec<_>>()
        );
        let info = q.info(Some(&topic), NOW);
        assert_eq!((info.delayed, info.ready, info.leased), (1_000, 0, 0));
        assert_eq!(info.partitions[0].ack_floor, 0);
        assert!(queues.delay_budget.used() > 0);
    }
    let (_s, registry, queues) = open(dir.path());
    let (q, topic) = (queues.get("t", "q").unwrap(), registry.get("t").unwrap());
    // Deferred still, before any look read the log.
    let info = q.info(Some(&topic), NOW);
    assert_eq!((info.delayed, info.ready, info.leased), (1_000, 0, 0));
    assert!(
        look(&queues, &q, &topic, at - 1).is_empty(),
        "delivered early"
    );
    let acked = drain(&queues, &q, &topic, at);
    assert_eq!(acked.iter().copied().collect::<BTreeSet<_>>().len(), 1_000);
    assert_eq!(acked.len(), 1_000, "each record once");
    assert!(acked.iter().all(|o| *o < 1_000));
    let info = q.info(Some(&topic), at);
    assert_eq!((info.delayed, info.ready), (0, 0));
}

#[test]
fn a_checkpoint_keeps_a_large_deferred_set_in_parts_and_drops_loaded_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let at = NOW + 60_000;
    let n = 250_000;
    {
        let (_s, registry, queues) = open(dir.path());
        let topic = topic_t(&registry);
        append(&topic, n, at);
        let q = create(&registry, &queues, 10_000);
        let mut looks = 0;
        while q.info(Some(&topic), NOW).delayed < n as u64 {
            assert!(look(&queues, &q, &topic, NOW).is_empty());
            looks += 1;
            assert!(
                looks < 100,
                "the scan does not get through the delayed records"
            );
        }
        let mut parts = 0;
        queues
            .log
            .checkpoint(|| {
                let (events, _) = q.checkpoint();
                parts = events
                    .iter()
                    .filter(|e| matches!(e, Event::SnapshotDeferred { .. }))
                    .count();
                events
            })
            .unwrap();
        assert!(parts >= 2, "{parts} part(s)");
    }
    let (_s, registry, queues) = open(dir.path());
    let (q, topic) = (queues.get("t", "q").unwrap(), registry.get("t").unwrap());
    assert_eq!(q.info(Some(&topic), NOW).delayed, n as u64);
    let acked = drain(&queues, &q, &topic, at);
    assert_eq!(acked.iter().copied().collect::<BTreeSet<_>>().len(), n);
    assert_eq!(acked.len(), n);
    // The loaded buckets go with the next checkpoint.
    let delays = dir.path().join(super::DELAY_DIR);
    let files = || walk(&delays);
    assert!(files() > 0);
    queues
        .log
        .checkpoint(|| {
            let (events, loaded) = q.checkpoint();
            super::delays::remove_loaded(&loaded);
            events
        })
        .unwrap();
    assert_eq!(files(), 0);
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|e| {
                let p = e.unwrap().path();
                if p.is_dir() { walk(&p) } else { 1 }
            })
            .sum()
    })
}

#[test]
fn records_never_leased_count_in_the_oldest_ready_age() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, registry, queues) = open(dir.path());
    let topic = topic_t(&registry);
    // Timestamped NOW − 1 s, never looked at by any worker.
    append(&topic, 3, 0);
    let q = create(&registry, &queues, 0);
    let info = q.info(Some(&topic), NOW + 4_000);
    assert_eq!((info.ready, info.oldest_ready_age_ms), (3, 5_000));
    // Records due later are not ready, so they are no age.
    let dir = tempfile::tempdir().unwrap();
    let (_s, registry, queues) = open(dir.path());
    let topic = topic_t(&registry);
    append(&topic, 1, NOW + 60_000);
    let q = create(&registry, &queues, 0);
    assert_eq!(q.info(Some(&topic), NOW).oldest_ready_age_ms, 0);
}
