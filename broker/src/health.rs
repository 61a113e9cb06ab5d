//! Partition health: the gRPC health service [`PARTITIONS_SERVICE`], NOT_SERVING while any
//! topic partition's log has failed (a failed fsync), SERVING otherwise.
//!
//! One failed partition must not take the broker down: it refuses appends, every other
//! partition keeps working, so the overall health (`""` and `spool.v1.Broker`) stays
//! SERVING and this separate service is what an operator's probe or alert watches. Which
//! partition failed, and why, is in `DescribeTopic` and the `spool_partition_failed` metric.
//!
//! Event-driven, not polled: storage calls its failure hook when a log fails, and the topic
//! admin paths signal deletions; [`watch`] recomputes the status on each signal.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::service::Inner;

/// The health service name that reports the broker's partitions.
pub const PARTITIONS_SERVICE: &str = "spool.v1.Partitions";

/// Signals that a partition's health may have changed (a log failed, a topic went away).
#[derive(Clone, Default)]
pub struct PartitionEvents(Arc<Notify>);

impl PartitionEvents {
    /// Asks the watcher to recompute. Never lost: a signal while it is busy is kept.
    pub fn changed(&self) {
        self.0.notify_one();
    }

    /// The storage failure hook that signals these events.
    pub fn storage_hook(&self) -> spool_storage::FailureHook {
        let events = self.clone();
        Box::new(move |_log| events.changed())
    }
}

/// The number of topic partitions whose log has failed.
pub fn failed_partitions(inner: &Inner) -> usize {
    inner
        .registry
        .list()
        .iter()
        .flat_map(|t| t.partitions.iter())
        .filter(|p| p.failure().is_some())
        .count()
}

/// Keeps [`PARTITIONS_SERVICE`] in step with the partitions until `shutdown` is cancelled.
pub async fn watch(inner: Arc<Inner>, health: HealthReporter, shutdown: CancellationToken) {
    let mut last = None;
    loop {
        let failed = failed_partitions(&inner);
        let status = if failed == 0 {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            if failed > 0 {
                tracing::error!(
                    failed,
                    "{PARTITIONS_SERVICE} is NOT_SERVING: partitions refuse appends (see DescribeTopic)"
                );
            }
            health.set_service_status(PARTITIONS_SERVICE, status).await;
            last = Some(status);
        }
        tokio::select! {
            () = inner.partition_events.0.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}
