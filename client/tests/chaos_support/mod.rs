//! The crash-loop harness: the real `spoold` under continuous idempotent production and
//! group consumption, killed with SIGKILL at random moments and restarted on the same port
//! and data directory, with the whole state checked after every restart.
//!
//! # Layout
//! - `spoold`: the broker process (found or built, started on a fixed port, killed).
//! - `value`: self-checking record values (id + checksum).
//! - `ledger`: what the clients were told (acknowledgements, deliveries, commits).
//! - `workload`: the producer and the group members.
//! - `check`: the read-back and committed-offset checks.
//!
//! # What a cycle checks
//! After each kill and restart, once the clients have resumed on their own:
//! 1. the producer's acknowledgements advance again and each member receives records;
//! 2. every record acknowledged before the kill has been consumed by the group;
//! 3. the log, read from offset 0, is dense, intact, free of duplicates, and holds every
//!    acknowledged record at the partition and offset of its acknowledgement;
//! 4. no committed offset moved backwards or fell below an acknowledged commit;
//! 5. no client reported an error, and no consumer received a corrupt record.
//!
//! The kill schedule (run lengths, down times) and the payloads come from one seed,
//! printed at the start; `SPOOL_CHAOS_SEED` replays it. Thread timing is not replayed, so
//! a replay hits the same moments in wall-clock terms, not the same instructions.

mod check;
mod ledger;
mod spoold;
mod value;
mod workload;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spool_client::v1::{FsyncPolicy, TopicConfig};
use spool_client::{
    Backoff, Client, ClientOptions, GroupConsumer, GroupOptions, Producer, ProducerOptions,
};
use tokio::sync::watch;

use ledger::Ledger;

/// The longest any one wait may take before the run counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(60);

const TOPIC: &str = "chaos";
const GROUP: &str = "chaos-group";

/// One run's shape.
pub struct Config {
    pub cycles: usize,
    /// How long the broker runs before each kill, in milliseconds.
    pub run_ms: Range<u64>,
    /// How long it stays down before the restart, in milliseconds.
    pub down_ms: Range<u64>,
    /// Records produced per second.
    pub rate: u32,
    pub partitions: u32,
    pub members: usize,
    /// The topic's fsync policy. A SIGKILL leaves the kernel's page cache intact, so
    /// every policy must keep every acknowledged record through it.
    pub fsync: FsyncPolicy,
}

/// The figures of a finished run.
pub struct Report {
    /// Records the producer failed instead of resending (each a bug), with the first few
    /// errors, and how many of them are stored nonetheless.
    pub producer_failed: usize,
    pub producer_failures: Vec<String>,
    pub failed_but_stored: usize,
    /// Kill-and-restart cycles that completed, with every check passed.
    pub cycles: usize,
    pub elapsed: Duration,
    pub produced: u64,
    pub acked: u64,
    pub stored: u64,
    pub consumed: u64,
    pub deliveries: u64,
    pub commits_ok: u64,
    pub commits_rejected: u64,
    pub failed_starts: usize,
}

/// The seed from `SPOOL_CHAOS_SEED`, or a fresh one.
fn seed() -> u64 {
    match std::env::var("SPOOL_CHAOS_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("SPOOL_CHAOS_SEED={s:?} is not a u64")),
        Err(_) => rand::random(),
    }
}

/// Fails the run with everything a reader needs to reproduce and diagnose it.
fn fail(seed: u64, cycle: usize, what: &str, lines: &[String], spoold: &spoold::Spoold) -> ! {
    let shown: Vec<&String> = lines.iter().take(30).collect();
    panic!(
        "chaos: {what} after cycle {cycle} (seed {seed}; replay with SPOOL_CHAOS_SEED={seed})\n{}\n{}--- spoold's log (latest start) ---\n{}",
        shown
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        if lines.len() > shown.len() {
            format!("... and {} more\n", lines.len() - shown.len())
        } else {
            String::new()
        },
        spoold.last_log()
    )
}

/// Runs the crash loop; panics on the first violated check.
pub async fn run(config: Config) -> Report {
    let seed = seed();
    eprintln!(
        "chaos: seed {seed} (replay with SPOOL_CHAOS_SEED={seed}); {} cycles, {} partitions, {} members, {} records/s, {}",
        config.cycles,
        config.partitions,
        config.members,
        config.rate,
        config.fsync.as_str_name()
    );
    let began = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut spoold = spoold::Spoold::start(spoold::binary()).await;
    let options = ClientOptions {
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
        },
        request_timeout: Duration::from_secs(20),
        max_retries: 100,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(spoold.endpoint(), options)
        .await
        .expect("connecting to spoold");
    client
        .create_topic(
            TOPIC,
            config.partitions,
            TopicConfig {
                fsync: config.fsync as i32,
                fsync_interval_ms: 200,
                // The smallest segments: kills land across rolls and index writes too.
                segment_bytes: 64 * 1024,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("creating the topic");
    let producer = Arc::new(
        Producer::new(
            &client,
            TOPIC,
            ProducerOptions {
                batch_records: 50,
                linger: Duration::from_millis(2),
                buffer_records: 20_000,
                ..ProducerOptions::default()
            },
        )
        .await
        .expect("starting the producer"),
    );
    let ledger = Arc::new(Ledger::new(config.members));
    let (stop, stop_rx) = watch::channel(false);
    let producing = tokio::spawn(workload::produce(
        Arc::clone(&producer),
        Arc::clone(&ledger),
        config.rate,
        rng.random(),
        stop_rx,
    ));
    let mut members = Vec::new();
    for m in 0..config.members {
        let consumer = GroupConsumer::new(
            &client,
            GROUP,
            TOPIC,
            GroupOptions {
                buffer: 64,
                ..GroupOptions::default()
            },
        )
        .await
        .expect("joining the group");
        members.push(tokio::spawn(workload::consume(
            m,
            consumer,
            Arc::clone(&ledger),
        )));
    }

    let mut committed: check::Committed = vec![None; config.partitions as usize];
    // Kill-and-restart cycles that ran to the end of their checks (the report's `cycles`:
    // what ran, not what was asked for).
    let mut completed = 0;
    for cycle in 1..=config.cycles {
        let run_for = Duration::from_millis(rng.random_range(config.run_ms.clone()));
        let down_for = Duration::from_millis(rng.random_range(config.down_ms.clone()));
        tokio::time::sleep(run_for).await;

        let (owed, in_flight) = {
            let s = ledger.lock();
            (s.acked_ids(), s.enqueued - s.acked_count)
        };
        spoold.kill();
        tokio::time::sleep(down_for).await;
        let restarting = Instant::now();
        spoold.start_again().await;
        let restart_time = restarting.elapsed();
        // Records enqueued from now on can only be acknowledged, and delivered, over
        // streams opened after the restart.
        let fresh = ledger.lock().enqueued;

        // The same client objects must carry on by themselves: the producer gets a record
        // enqueued after the restart acknowledged, every member receives one (records go
        // round-robin over the partitions, and each member owns some), and the group
        // consumes everything acknowledged before the kill.
        let resuming = Instant::now();
        let mut producer_at = None;
        let mut members_at = vec![None; config.members];
        let mut caught_up_at = None;
        loop {
            let (faults, unconsumed) = {
                let s = ledger.lock();
                let elapsed = resuming.elapsed();
                if producer_at.is_none() && s.max_acked.is_some_and(|id| id >= fresh) {
                    producer_at = Some(elapsed);
                }
                for (m, at) in members_at.iter_mut().enumerate() {
                    if at.is_none() && s.max_received[m].is_some_and(|id| id >= fresh) {
                        *at = Some(elapsed);
                    }
                }
                let unconsumed = owed.iter().filter(|&&id| !s.consumed(id)).count();
                if caught_up_at.is_none() && unconsumed == 0 {
                    caught_up_at = Some(elapsed);
                }
                (s.faults(), unconsumed)
            };
            if !faults.is_empty() {
                fail(seed, cycle, "a client reported a fault", &faults, &spoold);
            }
            if producer_at.is_some()
                && caught_up_at.is_some()
                && members_at.iter().all(Option::is_some)
            {
                break;
            }
            if resuming.elapsed() > DEADLINE {
                let why = format!(
                    "producer resumed after {producer_at:?}; members after {members_at:?}; \
                     {unconsumed} records acknowledged before the kill not yet consumed"
                );
                fail(
                    seed,
                    cycle,
                    &format!("the clients did not resume within {DEADLINE:?}"),
                    &[why],
                    &spoold,
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let resume_time = format!(
            "producer {:.1?}, members {:.1?}, caught up {:.1?}",
            producer_at.unwrap_or_default(),
            members_at
                .iter()
                .map(|a| a.unwrap_or_default())
                .collect::<Vec<_>>(),
            caught_up_at.unwrap_or_default()
        );

        let state = match check::log(&client, TOPIC, config.partitions, &ledger, false).await {
            Ok(s) => s,
            Err(problems) => fail(seed, cycle, "the log check failed", &problems, &spoold),
        };
        committed = match check::offsets(&client, GROUP, TOPIC, &committed, &ledger).await {
            Ok(c) => c,
            Err(problems) => fail(seed, cycle, "the offsets check failed", &problems, &spoold),
        };
        let s = ledger.lock();
        eprintln!(
            "chaos: cycle {cycle}/{}: killed after {run_for:?} with {in_flight} records \
             unacknowledged; down {down_for:?}; serving again in {restart_time:.1?}; clients \
             resumed after the restart: {resume_time}; log {} records, ends {:?}; acked {}; consumed {} \
             ({} deliveries); committed {:?}; producer failures so far {}",
            config.cycles,
            state.records,
            state.ends,
            s.acked_count,
            s.consumed_unique,
            s.deliveries_total,
            committed,
            s.producer_failed.len(),
        );
        completed += 1;
    }

    // Wind down: stop producing, collect every acknowledgement, let the group catch up.
    stop.send_replace(true);
    let collector = tokio::time::timeout(DEADLINE, producing)
        .await
        .expect("the producer loop stops")
        .expect("the producer loop");
    tokio::time::timeout(DEADLINE, producer.flush())
        .await
        .expect("flushing within the deadline")
        .expect("flushing the producer");
    tokio::time::timeout(DEADLINE, collector)
        .await
        .expect("collecting the acknowledgements")
        .expect("the collector");
    {
        let s = ledger.lock();
        if !s.faults().is_empty() || s.acked_count + s.producer_failed.len() as u64 != s.enqueued {
            let mut lines = s.faults();
            lines.push(format!(
                "{} records handed to the producer, {} acknowledged, {} failed",
                s.enqueued,
                s.acked_count,
                s.producer_failed.len()
            ));
            fail(
                seed,
                config.cycles,
                "the producer did not deliver everything",
                &lines,
                &spoold,
            );
        }
    }
    let last = config.cycles;
    let final_state = match check::log(&client, TOPIC, config.partitions, &ledger, true).await {
        Ok(s) => s,
        Err(problems) => fail(seed, last, "the final log check failed", &problems, &spoold),
    };
    let catching_up = Instant::now();
    loop {
        let c = match check::offsets(&client, GROUP, TOPIC, &committed, &ledger).await {
            Ok(c) => c,
            Err(problems) => fail(
                seed,
                last,
                "the final offsets check failed",
                &problems,
                &spoold,
            ),
        };
        let (all_consumed, faults, consumed, enqueued) = {
            let s = ledger.lock();
            let all = s.acked_ids().into_iter().all(|id| s.consumed(id));
            (all, s.faults(), s.consumed_unique, s.enqueued)
        };
        let all_committed = c
            .iter()
            .zip(&final_state.ends)
            .all(|(c, &end)| *c == Some(end));
        if !faults.is_empty() {
            fail(seed, last, "a client reported a fault", &faults, &spoold);
        }
        if all_consumed && all_committed {
            committed = c;
            break;
        }
        if catching_up.elapsed() > DEADLINE {
            let why = format!(
                "consumed {consumed} of {enqueued}; committed {c:?}, ends {:?}",
                final_state.ends
            );
            fail(seed, last, "the group did not catch up", &[why], &spoold);
        }
        committed = c;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in members {
        m.abort();
    }
    let s = ledger.lock();
    let report = Report {
        producer_failed: s.producer_failed.len(),
        producer_failures: s
            .producer_failed
            .iter()
            .take(5)
            .map(|(id, e)| format!("record {id}: {e}"))
            .collect(),
        failed_but_stored: final_state.failed_but_stored,
        cycles: completed,
        elapsed: began.elapsed(),
        produced: s.enqueued,
        acked: s.acked_count,
        stored: final_state.records,
        consumed: s.consumed_unique,
        deliveries: s.deliveries_total,
        commits_ok: s.commits_ok,
        commits_rejected: s.commits_rejected,
        failed_starts: spoold.failed_starts,
    };
    eprintln!(
        "chaos: FINISHED: seed {seed}, {} cycles in {:.1?}: produced {}, acknowledged {}, stored {} \
         (losses 0, duplicates 0, corrupt 0), producer failures {} ({} of them stored), consumed {} ({} deliveries, {} redelivered), \
         commits {} acknowledged / {} rejected after rebalances, committed {committed:?}, \
         restart attempts that had to be retried {}",
        report.cycles,
        report.elapsed,
        report.produced,
        report.acked,
        report.stored,
        report.producer_failed,
        report.failed_but_stored,
        report.consumed,
        report.deliveries,
        report.deliveries - report.consumed,
        report.commits_ok,
        report.commits_rejected,
        report.failed_starts
    );
    report
}
