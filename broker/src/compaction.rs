//! The compactor: every `compaction_check_ms`, each partition of a compacted topic whose
//! dirty share reached `compaction_min_dirty_percent` (or whose dirt is older than
//! `compaction_max_lag_ms`, or whose kept tombstones expired)
//! gets one pass of `Log::compact`, on a blocking thread, one partition at a time.

use std::sync::Arc;

use spool_storage::CompactOptions;
use tokio_util::sync::CancellationToken;

use crate::service::Inner;

/// Runs until `token` is cancelled. A pass in progress at shutdown is left to end or die
/// with the process: each segment's swap is atomic, so either leaves the log whole.
pub async fn run(inner: Arc<Inner>, token: CancellationToken) {
    let mut tick = tokio::time::interval(inner.config.compaction_check());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        let inner = Arc::clone(&inner);
        let token = token.clone();
        if tokio::task::spawn_blocking(move || pass(&inner, &token))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One look at every compacted partition.
fn pass(inner: &Inner, token: &CancellationToken) {
    let config = &inner.config;
    let ratio = f64::from(config.compaction_min_dirty_percent) / 100.0;
    for topic in inner.registry.list() {
        if !topic.settings.cleanup_policy.compacts() {
            continue;
        }
        let retention = topic
            .settings
            .delete_retention_ms
            .unwrap_or(config.topic_defaults.delete_retention_ms);
        for p in &topic.partitions {
            if token.is_cancelled() {
                return;
            }
            let now_ms = crate::now_ms();
            if !p
                .log
                .needs_compaction(now_ms, ratio, config.compaction_max_lag_ms)
            {
                continue;
            }
            let opts = CompactOptions {
                now_ms,
                delete_retention_ms: retention,
                max_keys: (config.compaction_map_bytes / 32) as usize,
                bytes_per_sec: config.compaction_bytes_per_sec,
            };
            match p.log.compact(&opts) {
                Ok(report) => {
                    let m = &inner.metrics.compaction;
                    m.passes.inc();
                    m.bytes_cleaned.inc_by(report.bytes_cleaned());
                    m.records_removed.inc_by(report.records_removed);
                    m.last_pass_seconds.set(report.duration.as_secs_f64());
                }
                Err(e) => {
                    tracing::error!(topic = %topic.name, partition = p.index, error = %e, "compaction failed");
                }
            }
        }
    }
}
