//! Prometheus metrics, served as text at `/metrics` on the metrics address.
//!
//! Counters and histograms are updated on the request paths; per-partition end offsets and
//! per-group lag are gauges refreshed from the registry at each scrape, so deleted topics
//! disappear from the output.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;
use tokio_util::sync::CancellationToken;

use crate::service::Inner;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub principal: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcErrorLabels {
    pub rpc: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub topic: String,
    pub queue: String,
}

/// A queue's gauges and totals, refreshed from its state at each scrape.
#[derive(Default)]
struct QueueMetrics {
    ready: Family<QueueLabels, Gauge>,
    delayed: Family<QueueLabels, Gauge>,
    leased: Family<QueueLabels, Gauge>,
    paused: Family<QueueLabels, Gauge>,
    oldest_ready_age: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    acked: Family<QueueLabels, Counter>,
    redelivered: Family<QueueLabels, Counter>,
    dead_lettered: Family<QueueLabels, Counter>,
    redriven: Family<QueueLabels, Counter>,
    redrive_remaining: Family<QueueLabels, Gauge>,
}

/// Every metric the broker exports.
pub struct Metrics {
    registry: PromRegistry,
    pub appended_records: Family<TopicLabel, Counter>,
    pub appended_bytes: Family<TopicLabel, Counter>,
    pub read_bytes: Family<TopicLabel, Counter>,
    pub append_latency: Histogram,
    pub fsync_latency: Histogram,
    /// `Read` latency, from request to answer (a long poll's wait included).
    read_latency: Histogram,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_errors: Family<RpcErrorLabels, Counter>,
    pub active_subscriptions: Gauge,
    /// Answers queued on Consume streams for members that have not read them yet.
    pub consume_unsent_responses: Gauge,
    pub data_loss_errors: Counter,
    /// Completed passes of the retention task over every partition.
    pub retention_runs: Counter,
    quota_delay: Family<QuotaLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    quota_rejections: Family<QuotaLabels, Counter>,
    end_offset: Family<PartitionLabels, Gauge>,
    durable_offset: Family<PartitionLabels, Gauge>,
    partition_fsyncs: Family<PartitionLabels, Gauge>,
    partition_failed: Family<PartitionLabels, Gauge>,
    partition_disk_bytes: Family<PartitionLabels, Gauge>,
    /// Dirty share of a compacted partition's closed segments (see `compaction`).
    partition_dirty_ratio: Family<PartitionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub compaction: CompactionMetrics,
    disk_free_bytes: Gauge,
    disk_total_bytes: Gauge,
    consumer_lag: Family<LagLabels, Gauge>,
    queues: QueueMetrics,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~84 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 24))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = PromRegistry::with_prefix("spool");
        let m = Metrics {
            appended_records: Family::default(),
            appended_bytes: Family::default(),
            read_bytes: Family::default(),
            append_latency: latency_histogram(),
            fsync_latency: latency_histogram(),
            read_latency: latency_histogram(),
            rpc_requests: Family::default(),
            rpc_errors: Family::default(),
            active_subscriptions: Gauge::default(),
            consume_unsent_responses: Gauge::default(),
            retention_runs: Counter::default(),
            data_loss_errors: Counter::default(),
            quota_delay: Family::default(),
            quota_rejections: Family::default(),
            end_offset: Family::default(),
            durable_offset: Family::default(),
            partition_fsyncs: Family::default(),
            partition_failed: Family::default(),
            partition_disk_bytes: Family::default(),
            partition_dirty_ratio: Family::default(),
            compaction: CompactionMetrics::default(),
            disk_free_bytes: Gauge::default(),
            disk_total_bytes: Gauge::default(),
            consumer_lag: Family::default(),
            queues: QueueMetrics::default(),
            registry: PromRegistry::default(),
        };
        registry.register(
            "partition_dirty_ratio",
            "Share of a compacted partition's closed segment bytes written since its last compaction",
            m.partition_dirty_ratio.clone(),
        );
        m.compaction.register(&mut registry);
        registry.register(
            "appended_records",
            "Records appended",
            m.appended_records.clone(),
        );
        registry.register(
            "appended_bytes",
            "Payload bytes appended (keys, values, headers)",
            m.appended_bytes.clone(),
        );
        registry.register(
            "read_bytes",
            "Payload bytes served by Read, Subscribe and Consume",
            m.read_bytes.clone(),
        );
        registry.register(
            "append_latency_seconds",
            "Append latency, from request to answer",
            m.append_latency.clone(),
        );
        registry.register(
            "fsync_latency_seconds",
            "Time appends waited for their fsync",
            m.fsync_latency.clone(),
        );
        registry.register(
            "read_latency_seconds",
            "Read latency, from request to answer (a long poll's wait included)",
            m.read_latency.clone(),
        );
        registry.register(
            "rpc_requests",
            "gRPC requests by RPC (streams counted when they open)",
            m.rpc_requests.clone(),
        );
        registry.register(
            "rpc_errors",
            "gRPC requests answered with an error status, by RPC and code (streams: the status they open with)",
            m.rpc_errors.clone(),
        );
        registry.register(
            "partition_disk_bytes",
            "Bytes of each partition on disk (segments and indexes)",
            m.partition_disk_bytes.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Bytes free to the broker on the file system of its data directory",
            m.disk_free_bytes.clone(),
        );
        registry.register(
            "disk_total_bytes",
            "Size of the file system of the broker's data directory",
            m.disk_total_bytes.clone(),
        );
        registry.register(
            "active_subscriptions",
            "Open Subscribe and Consume streams",
            m.active_subscriptions.clone(),
        );
        registry.register(
            "consume_unsent_responses",
            "Answers queued on Consume streams that their members have not read yet (each stream stops reading requests past a bound)",
            m.consume_unsent_responses.clone(),
        );
        registry.register(
            "retention_runs",
            "Completed passes of the retention task over every partition",
            m.retention_runs.clone(),
        );
        registry.register(
            "data_loss_errors",
            "Reads refused because stored data failed its checks",
            m.data_loss_errors.clone(),
        );
        registry.register(
            "quota_delay_seconds",
            "Time requests were delayed by quotas",
            m.quota_delay.clone(),
        );
        registry.register(
            "quota_rejections",
            "Requests refused by quotas",
            m.quota_rejections.clone(),
        );
        registry.register(
            "partition_durable_offset",
            "Every offset of the partition below this is on disk (fdatasync'd)",
            m.durable_offset.clone(),
        );
        registry.register(
            "partition_fsyncs",
            "fdatasyncs of the partition's log since the broker opened it",
            m.partition_fsyncs.clone(),
        );
        registry.register(
            "partition_end_offset",
            "End offset of each partition",
            m.end_offset.clone(),
        );
        registry.register(
            "partition_failed",
            "1 while a partition's log has failed (an fsync error) and refuses appends until a restart, else 0",
            m.partition_failed.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records between a group's committed offset and the end",
            m.consumer_lag.clone(),
        );
        let q = &m.queues;
        registry.register(
            "queue_ready",
            "Records of a queue available for delivery now",
            q.ready.clone(),
        );
        registry.register(
            "queue_delayed",
            "Records of a queue waiting for a retry's backoff, a nack's delay or a delivery time",
            q.delayed.clone(),
        );
        registry.register(
            "queue_leased",
            "Records of a queue leased to workers",
            q.leased.clone(),
        );
        registry.register(
            "queue_paused",
            "1 while a queue cannot deliver new records (DescribeQueue.paused says why), else 0",
            q.paused.clone(),
        );
        registry.register(
            "queue_oldest_ready_age_seconds",
            "How long the oldest ready record of a queue has waited",
            q.oldest_ready_age.clone(),
        );
        registry.register("queue_acked", "Records of a queue acked", q.acked.clone());
        registry.register(
            "queue_redelivered",
            "Leases granted for a second or later attempt",
            q.redelivered.clone(),
        );
        registry.register(
            "queue_dead_lettered",
            "Records of a queue dead-lettered",
            q.dead_lettered.clone(),
        );
        registry.register(
            "queue_redriven",
            "Dead-lettered records of a queue made available again by redrives",
            q.redriven.clone(),
        );
        registry.register(
            "queue_redrive_remaining",
            "Dead-letter records a running redrive of a queue has still to look at",
            q.redrive_remaining.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn observe_append(&self, topic: &str, records: u64, bytes: u64, took: Duration) {
        let label = TopicLabel {
            topic: topic.to_string(),
        };
        self.appended_records.get_or_create(&label).inc_by(records);
        self.appended_bytes.get_or_create(&label).inc_by(bytes);
        self.append_latency.observe(took.as_secs_f64());
    }

    /// A quota delayed a request (`Some(wait)`) or refused it (`None`).
    pub fn observe_quota(
        &self,
        who: &crate::auth::Principal,
        dir: crate::quota::Direction,
        wait: Option<Duration>,
    ) {
        let labels = QuotaLabels {
            principal: who.name().to_string(),
            direction: match dir {
                crate::quota::Direction::Produce => "produce".into(),
                crate::quota::Direction::Consume => "consume".into(),
            },
        };
        match wait {
            Some(w) => {
                self.quota_delay
                    .get_or_create(&labels)
                    .inc_by(w.as_secs_f64());
            }
            None => {
                self.quota_rejections.get_or_create(&labels).inc();
            }
        }
    }

    /// A gRPC request answered with `code` (its canonical name) after `took`.
    pub fn observe_rpc(&self, rpc: &str, code: &str, took: Duration) {
        self.rpc_requests
            .get_or_create(&RpcLabels {
                rpc: rpc.to_string(),
            })
            .inc();
        if code != "OK" {
            self.rpc_errors
                .get_or_create(&RpcErrorLabels {
                    rpc: rpc.to_string(),
                    code: code.to_string(),
                })
                .inc();
        }
        if rpc == "Read" {
            self.read_latency.observe(took.as_secs_f64());
        }
    }

    pub fn observe_read(&self, topic: &str, bytes: u64) {
        self.read_bytes
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc_by(bytes);
    }

    /// Refreshes the gauges and renders the text exposition format.
    pub fn render(&self, inner: &Inner) -> String {
        self.end_offset.clear();
        self.durable_offset.clear();
        self.partition_fsyncs.clear();
        self.partition_failed.clear();
        self.partition_disk_bytes.clear();
        self.partition_dirty_ratio.clear();
        self.consumer_lag.clear();
        match rustix::fs::statvfs(&inner.config.data_dir) {
            Ok(s) => {
                self.disk_free_bytes
                    .set(s.f_bavail.saturating_mul(s.f_frsize) as i64);
                self.disk_total_bytes
                    .set(s.f_blocks.saturating_mul(s.f_frsize) as i64);
            }
            Err(e) => tracing::warn!(error = %e, "statvfs of the data directory failed"),
        }
        let topics = inner.registry.list();
        for t in &topics {
            for p in &t.partitions {
                let labels = PartitionLabels {
                    topic: t.name.clone(),
                    partition: p.index,
                };
                self.end_offset
                    .get_or_create(&labels)
                    .set(p.log.end_offset() as i64);
                self.durable_offset
                    .get_or_create(&labels)
                    .set(p.log.durable_offset() as i64);
                self.partition_fsyncs
                    .get_or_create(&labels)
                    .set(p.log.fsync_count() as i64);
                self.partition_failed
                    .get_or_create(&labels)
                    .set(i64::from(p.log.failure().is_some()));
                self.partition_disk_bytes
                    .get_or_create(&labels)
                    .set(p.log.size_bytes() as i64);
                if t.settings.cleanup_policy.compacts() {
                    self.partition_dirty_ratio
                        .get_or_create(&labels)
                        .set(p.log.dirty_ratio());
                }
            }
        }
        for (group, topic, partition, lag) in group_lags(inner) {
            self.consumer_lag
                .get_or_create(&LagLabels {
                    group,
                    topic,
                    partition,
                })
                .set(lag as i64);
        }
        self.render_queues(inner);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "rendering metrics failed");
        }
        out
    }
}

/// (group, topic, partition, lag) of every group with commits: the offset distance from its
/// committed offset (or the start, if none) to the end (on a compacted topic, more than the
/// records left to read).
pub fn group_lags(inner: &Inner) -> Vec<(String, String, u32, u64)> {
    let mut out = Vec::new();
    for (group, group_topics) in inner.offsets.groups() {
        for name in group_topics {
            let Ok(topic) = inner.registry.get(&name) else {
                continue;
            };
            let committed = inner.offsets.get(&group, &name);
            for p in &topic.partitions {
                let from = committed
                    .get(&p.index)
                    .map_or(p.log.start_offset(), |c| c.offset);
                let lag = p.log.end_offset().saturating_sub(from);
                out.push((group.clone(), name.clone(), p.index, lag));
            }
        }
    }
    out
}

impl Metrics {
    /// Payload bytes served of `topic` since the broker started.
    pub fn read_bytes_of(&self, topic: &str) -> u64 {
        self.read_bytes
            .get(&TopicLabel {
                topic: topic.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    fn render_queues(&self, inner: &Inner) {
        let m = &self.queues;
        m.ready.clear();
        m.delayed.clear();
        m.leased.clear();
        m.paused.clear();
        m.oldest_ready_age.clear();
        m.acked.clear();
        m.redelivered.clear();
        m.dead_lettered.clear();
        m.redriven.clear();
        m.redrive_remaining.clear();
        let now = crate::now_ms();
        for q in inner.queues.list(None) {
            let topic = inner.registry.get(&q.topic).ok();
            let info = q.info(topic.as_deref(), now);
            let labels = QueueLabels {
                topic: info.topic.clone(),
                queue: info.queue.clone(),
            };
            m.ready.get_or_create(&labels).set(info.ready as i64);
            m.delayed.get_or_create(&labels).set(info.delayed as i64);
            m.leased.get_or_create(&labels).set(info.leased as i64);
            m.paused
                .get_or_create(&labels)
                .set(i64::from(!info.paused.is_empty()));
            m.oldest_ready_age
                .get_or_create(&labels)
                .set(info.oldest_ready_age_ms as f64 / 1000.0);
            m.acked.get_or_create(&labels).inc_by(info.acked_total);
            m.redelivered
                .get_or_create(&labels)
                .inc_by(info.redelivered_total);
            m.dead_lettered
                .get_or_create(&labels)
                .inc_by(info.dead_lettered_total);
            m.redriven
                .get_or_create(&labels)
                .inc_by(info.redriven_total);
            m.redrive_remaining
                .get_or_create(&labels)
                .set(info.redrive_remaining as i64);
        }
    }
}

/// Serves `/metrics`, and the console (its pages at `/` and its JSON API under `/api/v1/`,
/// behind its guard),
/// until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    inner: Arc<Inner>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::response::IntoResponse as _;
    use axum::routing::get;
    let guard = Arc::new(crate::console::guard::Guard::new(
        listener.local_addr()?,
        &inner.config.console_hosts,
        inner.auth.enabled() || inner.config.console_writes,
    ));
    let api = crate::console::api::routes(Arc::clone(&inner))
        .merge(crate::console::pages::routes())
        .layer(axum::middleware::from_fn_with_state(
            guard,
            crate::console::guard::check,
        ));
    let app = axum::Router::new().merge(api).route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let inner = Arc::clone(&inner);
            async move {
                if inner.config.metrics_auth
                    && let Err(s) = crate::console::api::admit(
                        &inner,
                        &headers,
                        crate::auth::Operation::Describe,
                        crate::auth::Resource::Cluster,
                    )
                {
                    return crate::console::api::error(s);
                }
                // Rendering reads a record per queue partition (queue ages): not on the
                // async runtime.
                let body = tokio::task::spawn_blocking(move || inner.metrics.render(&inner))
                    .await
                    .unwrap_or_else(|e| format!("# rendering metrics failed: {e}\n"));
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The address a metrics listener is bound to, for logging.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

/// What the compactor has done since the broker started.
#[derive(Default)]
pub struct CompactionMetrics {
    pub passes: Counter,
    pub bytes_cleaned: Counter,
    pub records_removed: Counter,
    pub last_pass_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl CompactionMetrics {
    fn register(&self, registry: &mut PromRegistry) {
        registry.register(
            "compaction_passes",
            "Compaction passes that rewrote or checked a partition",
            self.passes.clone(),
        );
        registry.register(
            "compaction_bytes_cleaned",
            "Bytes compaction removed from compacted partitions",
            self.bytes_cleaned.clone(),
        );
        registry.register(
            "compaction_records_removed",
            "Records compaction removed (superseded values and expired tombstones)",
            self.records_removed.clone(),
        );
        registry.register(
            "compaction_last_pass_seconds",
            "Duration of the latest compaction pass of any partition",
            self.last_pass_seconds.clone(),
        );
    }
}
