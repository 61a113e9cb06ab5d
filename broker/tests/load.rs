//! Load: 1,000 concurrent Subscribe streams while a few producers append for a bounded
//! time. Every subscriber must receive every record, in offset order per partition; the
//! delivery latency (producer's send time, carried in the record, to the subscriber's
//! receive time) and the broker's RSS are reported.
//!
//! Sized to finish well under a minute in a debug build on a 2-core machine: the counts
//! below are the knobs. Nothing asserts on timing; only on what arrives and on memory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use hdrhistogram::Histogram;
use spool_proto::v1::start_position::Kind;
use spool_proto::v1::*;

/// Concurrent Subscribe streams.
const SUBSCRIBERS: usize = 1000;
/// Connections they are spread over (HTTP/2 servers cap concurrent streams per connection).
const CHANNELS: usize = 10;
/// Partitions of the topic; one producer appends to each.
const PARTITIONS: u32 = 4;
/// Batches each producer appends, one every [`PACE`].
const BATCHES: u32 = 40;
/// Records per batch.
const BATCH: u32 = 2;
/// The time between two batches of one producer: the run produces for BATCHES * PACE.
const PACE: Duration = Duration::from_millis(250);
/// Most the broker's RSS may grow over the run.
const RSS_BOUND_KIB: u64 = 300 * 1024;

const TOTAL: u64 = (PARTITIONS * BATCHES * BATCH) as u64;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_micros() as u64
}

/// The broker's resident set size, from `/proc/<pid>/status`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A record's value: `{partition}:{seq}:{sent_us}`, where `seq` counts the producer's
/// records (so it equals the offset) and `sent_us` is when its batch was sent.
fn encode(partition: u32, seq: u64, sent_us: u64) -> String {
    format!("{partition}:{seq}:{sent_us}")
}

fn decode(value: &[u8]) -> (u32, u64, u64) {
    let s = std::str::from_utf8(value).expect("a UTF-8 value");
    let mut parts = s.split(':').map(|p| p.parse::<u64>().expect("a number"));
    let mut next = || parts.next().expect("three fields");
    (next() as u32, next(), next())
}

/// Appends BATCHES batches of BATCH records to `partition`, one every PACE.
async fn produce(mut c: Client, partition: u32) {
    let mut tick = tokio::time::interval(PACE);
    let mut seq = 0u64;
    for _ in 0..BATCHES {
        tick.tick().await;
        let sent = now_us();
        let records = (0..BATCH)
            .map(|i| rec(encode(partition, seq + u64::from(i), sent)))
            .collect();
        let r = append(&mut c, "load", partition, records).await;
        assert_eq!(r.base_offset, seq, "partition {partition}");
        seq += u64::from(BATCH);
    }
}

/// Reads a stream until TOTAL records arrived; checks partition, order and content, and
/// records each record's delivery latency in microseconds.
async fn consume(
    id: usize,
    mut stream: tonic::Streaming<SubscribeResponse>,
    delivered: Arc<AtomicU64>,
) -> Histogram<u64> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 2).expect("histogram");
    let mut next = [0u64; PARTITIONS as usize];
    let mut got = 0u64;
    while got < TOTAL {
        let msg = within("a Subscribe message", stream.message())
            .await
            .unwrap_or_else(|s| panic!("subscriber {id} failed after {got} records: {s}"))
            .unwrap_or_else(|| panic!("subscriber {id}'s stream ended after {got} records"));
        let received = now_us();
        let p = msg.partition as usize;
        for r in &msg.records {
            let (partition, seq, sent) = decode(&r.value);
            assert_eq!(
                partition, msg.partition,
                "subscriber {id}: a record of another partition"
            );
            assert_eq!(
                r.offset, next[p],
                "subscriber {id}: partition {p} out of order"
            );
            assert_eq!(
                seq, r.offset,
                "subscriber {id}: partition {p} holds a wrong record"
            );
            next[p] += 1;
            latency
                .record(received.saturating_sub(sent).max(1))
                .expect("a latency within bounds");
        }
        got += msg.records.len() as u64;
        delivered.fetch_add(msg.records.len() as u64, Ordering::Relaxed);
    }
    assert_eq!(
        got, TOTAL,
        "subscriber {id} received more than was produced"
    );
    assert!(
        next.iter().all(|&n| n == u64::from(BATCHES * BATCH)),
        "subscriber {id}: {next:?}"
    );
    latency
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_receive_every_record_in_order_with_bounded_broker_memory() {
    let broker = Broker::start_with(&["--fsync", "never"]);
    let pid = broker.pid();
    let mut admin = broker.client().await;
    create_topic(&mut admin, "load", PARTITIONS, FsyncPolicy::Never).await;
    let baseline = rss_kib(pid);

    // Open every stream before producing, over CHANNELS connections.
    let mut clients = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        clients.push(broker.client().await);
    }
    let mut streams = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let req = SubscribeRequest {
            topic: "load".into(),
            start: start(Kind::Earliest),
            ..SubscribeRequest::default()
        };
        let s = subscribe(&mut clients[i % CHANNELS], req)
            .await
            .unwrap_or_else(|s| panic!("Subscribe #{i}: {s}"));
        streams.push(s);
    }
    let opened = rss_kib(pid);

    // Sample the broker's RSS while the run lasts.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(opened));
    let sampler = {
        let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let began = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(id, s)| tokio::spawn(consume(id, s, Arc::clone(&delivered))))
        .collect();
    let mut producers = Vec::new();
    for p in 0..PARTITIONS {
        producers.push(tokio::spawn(produce(broker.client().await, p)));
    }
    for p in producers {
        p.await.expect("a producer");
    }
    let produced_in = began.elapsed();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 2).expect("histogram");
    for r in readers {
        latency.add(r.await.expect("a subscriber")).expect("merge");
    }
    let elapsed = began.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("the RSS sampler");
    let end = rss_kib(pid);
    let peak = peak.load(Ordering::Relaxed).max(end);

    let ms = |us: u64| us as f64 / 1000.0;
    eprintln!(
        "load: {SUBSCRIBERS} subscribers over {CHANNELS} connections, {PARTITIONS} producers, \
         {TOTAL} records produced in {produced_in:.1?}, {} deliveries in {elapsed:.1?}",
        delivered.load(Ordering::Relaxed)
    );
    eprintln!(
        "load: delivery latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        ms(latency.value_at_quantile(0.50)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.value_at_quantile(0.999)),
        ms(latency.max())
    );
    eprintln!(
        "load: broker RSS {} MiB at start, {} MiB with the streams open, peak {} MiB, {} MiB at the end",
        baseline / 1024,
        opened / 1024,
        peak / 1024,
        end / 1024
    );
    assert_eq!(
        delivered.load(Ordering::Relaxed),
        TOTAL * SUBSCRIBERS as u64
    );
    assert_eq!(latency.len(), TOTAL * SUBSCRIBERS as u64);
    assert!(
        peak.saturating_sub(baseline) < RSS_BOUND_KIB,
        "the broker's RSS grew from {baseline} KiB to a peak of {peak} KiB"
    );
    let log = broker.log();
    assert!(!log.contains("panicked"), "spoold panicked:\n{log}");
}
