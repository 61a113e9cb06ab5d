//! Starting and stopping the broker: storage, topics, offsets, the gRPC server (with health
//! and reflection), the metrics endpoint, retention, and a graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spool_proto::v1::broker_server::BrokerServer;
use spool_storage::{Storage, StorageConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::config::BrokerConfig;
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::offsets::OffsetStore;
use crate::registry::Registry;
use crate::service::{BrokerService, Inner};

/// How long a shutdown waits for streams and in-flight requests before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A started broker: serving on its addresses until [`Running::shutdown`].
pub struct Running {
    /// The gRPC address actually bound (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// The metrics address actually bound.
    pub metrics_addr: SocketAddr,
    inner: Arc<Inner>,
    token: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    metrics_task: tokio::task::JoinHandle<std::io::Result<()>>,
    retention_task: tokio::task::JoinHandle<()>,
    dead_letter_task: tokio::task::JoinHandle<()>,
    health_task: tokio::task::JoinHandle<()>,
    health: tonic_health::server::HealthReporter,
}

/// Runs the broker until `shutdown` resolves, then stops gracefully.
pub async fn run(
    config: BrokerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    start(config).await?.run_until(shutdown).await
}

/// Largest HTTP/2 frame peers may send us (the protocol's default is 16 KiB).
const HTTP2_MAX_FRAME: u32 = 1 << 20;

/// Opens the data directory, recovers it and starts serving.
pub async fn start(config: BrokerConfig) -> Result<Running> {
    let config = Arc::new(config);
    let storage_config = StorageConfig {
        max_mapped_files: config.max_mapped_files,
        max_producers: config.max_producers,
        decompress_budget_bytes: usize::try_from(config.decompress_budget_bytes)
            .unwrap_or(usize::MAX),
    };
    let data_dir = config.data_dir.clone();
    let cfg = Arc::clone(&config);
    let delay_memory = config.queue_delay_memory_bytes;
    let partition_events = crate::health::PartitionEvents::default();
    let hook = partition_events.storage_hook();
    let (storage, registry, offsets, queues) = tokio::task::spawn_blocking(move || -> Result<_> {
        let storage = Arc::new(Storage::open(&data_dir, storage_config)?);
        storage.on_failure(hook);
        let offsets = OffsetStore::open(&storage)?;
        let registry = Registry::open(Arc::clone(&storage), Arc::clone(&cfg))?;
        crate::cluster::check_identity(&cfg.cluster, &data_dir, !registry.list().is_empty())?;
        let queues = crate::queue::Queues::open(&storage, &registry, delay_memory)?;
        Ok((storage, Arc::new(registry), offsets, Arc::new(queues)))
    })
    .await??;
    let topics = registry.list();
    let (records, partitions): (u64, usize) = topics.iter().fold((0, 0), |(r, p), t| {
        let n: u64 = t
            .partitions
            .iter()
            .map(|p| p.log.end_offset() - p.log.start_offset())
            .sum();
        (r + n, p + t.partitions.len())
    });
    tracing::info!(
        data_dir = %config.data_dir.display(),
        topics = topics.len(),
        partitions,
        records,
        groups = offsets.groups().len(),
        clean_start = registry.storage().clean_start(),
        "recovered"
    );
    let auth = crate::auth::Auth::new(&config.auth, config.tls.client_ca.is_some())
        .map_err(|e| Error::invalid(format!("configuration: {e}")))?;
    let quotas = crate::quota::Quotas::new(
        &config.quotas,
        Duration::from_millis(config.quota_max_delay_ms),
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io("bind", config.listen.to_string(), e))?;
    let grpc_addr = local_addr(&listener)?;
    let token = CancellationToken::new();
    let inner = Arc::new(Inner {
        config: Arc::clone(&config),
        auth,
        quotas,
        stream_budget: Arc::new(tokio::sync::Semaphore::new(
            ((config.stream_memory_bytes / 1024) as usize)
                .clamp(1024, tokio::sync::Semaphore::MAX_PERMITS),
        )),
        registry,
        offsets,
        queues,
        metrics: Metrics::default(),
        groups: Arc::new(crate::groups::Coordinator::default()),
        partition_events,
        shutdown: token.clone(),
        history: Default::default(),
        cluster: crate::cluster::Cluster::new(&config.cluster, grpc_addr.to_string())?,
    });

    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|e| Error::io("bind", config.metrics_listen.to_string(), e))?;
    let metrics_addr = local_addr(&metrics_listener)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BrokerServer<BrokerService>>().await;
    health
        .set_service_status(
            crate::health::PARTITIONS_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(spool_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Task(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(spool_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Task(format!("reflection: {e}")))?;
    // gzip and zstd request bodies are accepted (the size limit applies to what they
    // inflate to: a message past it is RESOURCE_EXHAUSTED while decompressing), and answers
    // are compressed for a client that asks for either.
    let broker = BrokerServer::new(BrokerService::new(Arc::clone(&inner)))
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd);
    let authn = Arc::clone(&inner);
    let broker = InterceptedService::new(broker, move |mut req: tonic::Request<()>| {
        if authn.cluster.is_replicated() {
            refuse_data_rpcs_in_a_cluster(&req)?;
        }
        let who = authn.auth.authenticate(&req)?;
        req.extensions_mut().insert(who);
        Ok(req)
    });
    // Reflection describes the whole API: it follows the admin permission. Health stays open.
    let admin = Arc::clone(&inner);
    let admin_only = move |req: tonic::Request<()>| {
        let who = admin.auth.authenticate(&req)?;
        admin
            .auth
            .check(
                &who,
                crate::auth::Operation::Admin,
                crate::auth::Resource::Cluster,
            )
            .map_err(tonic::Status::from)?;
        Ok(req)
    };
    let reflection_v1 = InterceptedService::new(reflection_v1, admin_only.clone());
    let reflection_v1alpha = InterceptedService::new(reflection_v1alpha, admin_only);

    let mut builder = tonic::transport::Server::builder();
    if config.tls.enabled() {
        builder = builder
            .tls_config(tls_config(&config.tls)?)
            .map_err(|e| Error::invalid(format!("TLS configuration: {e}")))?;
    }
    let peer_service = inner.cluster.is_replicated().then(|| {
        spool_proto::internal::peer_server::PeerServer::new(
            crate::cluster::peer_service::PeerService {
                inner: Arc::clone(&inner),
            },
        )
        .max_decoding_message_size(config.max_request_bytes)
    });
    let server_token = token.clone();
    let server = builder
        .layer(crate::rpc_metrics::RpcLayer::new(Arc::clone(&inner)))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        // A 1 MiB append arrives in one DATA frame rather than 64 of 16 KiB: fewer reads
        // and less frame assembly per batch.
        .max_frame_size(Some(HTTP2_MAX_FRAME))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(broker)
        .add_optional_service(peer_service)
        // tonic ignores `tcp_nodelay` for an incoming stream it did not bind: set it on the
        // accepted sockets here, or Nagle holds small answers back behind delayed ACKs.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move { server_token.cancelled().await },
        );
    let server = tokio::spawn(server);
    // Started once the peer service answers: the group's first election needs it.
    inner
        .cluster
        .start(
            storage,
            Arc::new(crate::cluster::local::LocalTopics {
                inner: Arc::downgrade(&inner),
            }),
            token.clone(),
        )
        .await?;
    let metrics_task = tokio::spawn(metrics::serve(
        metrics_listener,
        Arc::clone(&inner),
        token.clone(),
    ));
    let retention_task = tokio::spawn(retention_loop(Arc::clone(&inner)));
    tokio::spawn(crate::compaction::run(Arc::clone(&inner), token.clone()));
    // Ends with the runtime: it holds nothing that needs flushing.
    tokio::spawn(crate::console::history::run(
        Arc::clone(&inner),
        token.clone(),
    ));
    let dead_letter_task = tokio::spawn(crate::queue::dead_letter::run(
        Arc::clone(&inner.queues),
        Arc::clone(&inner.registry),
        token.clone(),
    ));
    let health_task = tokio::spawn(crate::health::watch(
        Arc::clone(&inner),
        health.clone(),
        token.clone(),
    ));
    tracing::info!(grpc = %grpc_addr, metrics = %metrics::describe(metrics_addr), "serving");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        inner,
        token,
        server,
        metrics_task,
        retention_task,
        dead_letter_task,
        health_task,
        health,
    })
}

impl Running {
    /// Serves until `signal` resolves (or the server fails), then shuts down.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<()> {
        tokio::select! {
            () = signal => tracing::info!("shutting down"),
            res = &mut self.server => {
                self.token.cancel();
                res.map_err(Error::from)?.map_err(|e| Error::Task(format!("gRPC server: {e}")))?;
            }
        }
        self.shutdown().await
    }

    /// Stops accepting, ends open streams with `UNAVAILABLE`, lets in-flight requests
    /// finish (for at most a grace period), then flushes and closes every log.
    pub async fn shutdown(mut self) -> Result<()> {
        self.token.cancel();
        self.health
            .set_not_serving::<BrokerServer<BrokerService>>()
            .await;
        // A request cut off may still be writing on the blocking pool: no marker then.
        let mut settled = true;
        if !self.server.is_finished()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server)
                .await
                .is_err()
        {
            tracing::warn!(
                "in-flight requests did not finish within {SHUTDOWN_GRACE:?}; stopping anyway"
            );
            self.server.abort();
            settled = false;
        }
        self.retention_task.abort();
        self.inner.cluster.shutdown().await;
        let _ = (&mut self.dead_letter_task).await;
        let _ = (&mut self.health_task).await;
        let _ = (&mut self.metrics_task).await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut clean = inner.registry.close() && settled;
            if let Err(e) = inner.offsets.close() {
                tracing::error!(error = %e, "closing the offsets log failed");
                clean = false;
            }
            if let Err(e) = inner.queues.close() {
                tracing::error!(error = %e, "closing the queue log failed");
                clean = false;
            }
            // Everything is closed and nothing writes again: the next start may trust it.
            if clean && let Err(e) = inner.registry.storage().mark_clean() {
                tracing::error!(error = %e, "could not leave the clean-shutdown marker; the next start recovers every partition in full");
            }
        })
        .await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The server side of TLS from PEM files.
fn tls_config(tls: &crate::config::TlsConfig) -> Result<tonic::transport::ServerTlsConfig> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::io("read", p, e));
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Err(Error::invalid(
            "tls.cert and tls.key must be given together",
        ));
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &tls.client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(!tls.require_client_cert);
    }
    Ok(config)
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr> {
    l.local_addr()
        .map_err(|e| Error::io("local address", "listener", e))
}

async fn retention_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.retention_check());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let inner = Arc::clone(&inner);
        let done = tokio::task::spawn_blocking(move || {
            let now = crate::now_ms();
            for topic in inner.registry.list() {
                for p in &topic.partitions {
                    if let Err(e) = p.log.roll_if_aged(now) {
                        tracing::error!(topic = %topic.name, partition = p.index, error = %e, "closing an aged segment failed");
                    }
                    if let Err(e) = p.log.enforce_retention(now) {
                        tracing::error!(topic = %topic.name, partition = p.index, error = %e, "retention failed");
                    }
                    p.log.expire_producers(now);
                }
            }
            let active: std::collections::HashSet<String> = inner
                .groups
                .memberships()
                .into_iter()
                .map(|(group, _)| group)
                .collect();
            if let Err(e) = inner
                .offsets
                .expire(now, inner.config.offsets_retention_ms, &active)
            {
                tracing::error!(error = %e, "expiring committed offsets failed");
            }
            if let Err(e) = inner.offsets.compact() {
                tracing::error!(error = %e, "compacting the committed offsets log failed");
            }
            inner.metrics.retention_runs.inc();
        })
        .await;
        if done.is_err() {
            return;
        }
    }
}

/// The RPCs a node of a cluster serves in this build: topic administration and the
/// cluster's own description. Partition data is not replicated yet, so the rest is refused
/// rather than served from one node's unreplicated copy.
const CLUSTER_RPCS: [&str; 6] = [
    "CreateTopic",
    "AlterTopic",
    "DeleteTopic",
    "ListTopics",
    "DescribeTopic",
    "DescribeCluster",
];

fn refuse_data_rpcs_in_a_cluster(req: &tonic::Request<()>) -> Result<(), tonic::Status> {
    let method = req
        .extensions()
        .get::<crate::rpc_metrics::RpcMethod>()
        .map_or("", |m| m.0.as_str());
    if CLUSTER_RPCS.contains(&method) {
        return Ok(());
    }
    Err(tonic::Status::failed_precondition(format!(
        "{method}: this node is one of a cluster, whose partition data is not replicated in this build yet; a cluster serves {} only (run spoold without --peers for the whole API)",
        CLUSTER_RPCS.join(", ")
    )))
}
