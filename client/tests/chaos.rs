//! Crash loop: the real `spoold` is killed with SIGKILL at random moments while an
//! idempotent producer and a two-member consumer group work through it, and restarted on
//! the same port and data directory. After every restart the harness checks that every
//! acknowledged record is stored exactly once where its acknowledgement said, offsets are
//! dense, no corrupt record is delivered, committed offsets never move backwards, and the
//! same client objects resumed by themselves. See `chaos_support` for the details and
//! `docs/reliability.md` for the guarantees this proves.
//!
//! - CI: `cargo test -p spool-client --test chaos` (6 cycles under `ALWAYS`, 3 under each
//!   other policy; builds `spoold` if needed). Ignored while the producer bug in
//!   `docs/reliability.md` is open: `-- --ignored sigkill` runs them.
//! - Soak: `SPOOL_SOAK_CYCLES=100 cargo test --release -p spool-client --test chaos --
//!   --ignored soak --nocapture`. `SPOOL_CHAOS_SEED=<seed>` replays a kill schedule.

mod chaos_support;
mod spoold_binary;

use chaos_support::{Config, Report};
use spool_client::v1::FsyncPolicy;

/// The end-of-run assertions every loop shares (the per-cycle checks already passed).
fn assert_clean(report: &Report) {
    assert_eq!(
        report.producer_failed, 0,
        "BUG: the Producer failed {} records instead of resending them after the restart \
         ({} of them are stored anyway), e.g. {:?}. A connection closed under a request \
         surfaces as CANCELLED, which spool_client::Error::is_retriable() does not treat as \
         retriable; see docs/reliability.md",
        report.producer_failed, report.failed_but_stored, report.producer_failures
    );
    assert!(report.produced > 0, "the run produced nothing to check");
    assert_eq!(report.acked, report.produced);
    assert_eq!(report.stored, report.produced);
    assert_eq!(report.consumed, report.produced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_crash_loop_loses_duplicates_and_corrupts_nothing_and_clients_resume() {
    let report = chaos_support::run(Config {
        cycles: 6,
        run_ms: 300..1500,
        down_ms: 0..200,
        rate: 1000,
        partitions: 4,
        members: 2,
        fsync: FsyncPolicy::Always,
    })
    .await;
    assert_eq!(
        report.cycles, 6,
        "every kill-and-restart cycle must have run"
    );
    assert_clean(&report);
}

/// A process crash leaves the page cache to the kernel, so even without fsyncs nothing
/// acknowledged may be lost: what `INTERVAL` and `NEVER` give up is power loss only.
async fn short_loop(fsync: FsyncPolicy) {
    let report = chaos_support::run(Config {
        cycles: 3,
        run_ms: 300..1200,
        down_ms: 0..200,
        rate: 500,
        partitions: 3,
        members: 2,
        fsync,
    })
    .await;
    assert_eq!(
        report.cycles, 3,
        "every kill-and-restart cycle must have run"
    );
    assert_clean(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_nothing_acknowledged_under_fsync_interval() {
    short_loop(FsyncPolicy::Interval).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_nothing_acknowledged_under_fsync_never() {
    short_loop(FsyncPolicy::Never).await;
}

/// The long run, by hand: `SPOOL_SOAK_CYCLES` cycles (default 100) of 0.5–3 s each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: minutes long; run by hand with --ignored soak"]
async fn soak() {
    let cycles = match std::env::var("SPOOL_SOAK_CYCLES") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("SPOOL_SOAK_CYCLES={s:?} is not a number")),
        Err(_) => 100,
    };
    let report = chaos_support::run(Config {
        cycles,
        run_ms: 500..3000,
        down_ms: 0..500,
        rate: 2000,
        partitions: 4,
        members: 2,
        fsync: FsyncPolicy::Always,
    })
    .await;
    assert_eq!(
        report.cycles, cycles,
        "every kill-and-restart cycle must have run"
    );
    assert_clean(&report);
}
