//! [`Client`]: a connection to a broker and the administrative calls.

use std::time::Duration;

use spool_proto::v1::broker_client::BrokerClient;
use spool_proto::v1::*;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::backoff::Backoff;
use crate::error::{Error, Result};

/// Transport security: TLS to the broker (an `https://` endpoint), optionally with a
/// client certificate (mutual TLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the certificate authority that signed the broker's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// The name to expect in the broker's certificate (default: the endpoint's host).
    pub domain: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Debug, Default)]
pub struct AuthHeader(Option<MetadataValue<Ascii>>);

impl Interceptor for AuthHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The transport under the generated client: a channel plus the auth header.
pub type Transport = InterceptedService<Channel, AuthHeader>;

/// How a [`Client`] connects and retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Longest wait for a TCP + HTTP/2 connection.
    pub connect_timeout: Duration,
    /// Longest wait for a unary call's answer (streams are not limited).
    pub request_timeout: Duration,
    /// HTTP/2 pings on idle connections, so a half-open connection is noticed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// Attempts of an idempotent call on a retriable error before giving up.
    pub max_retries: u32,
    /// TLS settings; required for an `https://` endpoint (at least `ca`).
    pub tls: Option<TlsOptions>,
    /// A bearer token sent with every call.
    pub token: Option<String>,
    /// Compress request messages with this codec and ask the broker to compress its
    /// answers (for a slow link; costs CPU on both ends). `None`: plain messages.
    pub grpc_compression: Option<GrpcCompression>,
}

/// A gRPC message compression codec the broker accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCompression {
    Gzip,
    Zstd,
}

impl GrpcCompression {
    fn encoding(self) -> tonic::codec::CompressionEncoding {
        match self {
            GrpcCompression::Gzip => tonic::codec::CompressionEncoding::Gzip,
            GrpcCompression::Zstd => tonic::codec::CompressionEncoding::Zstd,
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_retries: 5,
            tls: None,
            token: None,
            grpc_compression: None,
        }
    }
}

/// A connection to a broker. Cheap to clone; clones share the HTTP/2 connection, which
/// reconnects by itself after a broker restart.
#[derive(Clone, Debug)]
pub struct Client {
    raw: BrokerClient<Transport>,
    endpoint: String,
    options: ClientOptions,
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:7450`) with default options.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client> {
        Client::connect_with(endpoint, ClientOptions::default()).await
    }

    /// Connects with explicit options. Fails at once if the broker cannot be reached.
    pub async fn connect_with(
        endpoint: impl Into<String>,
        options: ClientOptions,
    ) -> Result<Client> {
        let endpoint = endpoint.into();
        let invalid = |reason: String| Error::InvalidEndpoint {
            endpoint: endpoint.clone(),
            reason,
        };
        let mut ep = Endpoint::from_shared(endpoint.clone()).map_err(|e| invalid(e.to_string()))?;
        let https = endpoint.starts_with("https://");
        match (&options.tls, https) {
            (Some(tls), true) => {
                ep = ep
                    .tls_config(client_tls(tls).map_err(&invalid)?)
                    .map_err(|e| invalid(e.to_string()))?;
            }
            (None, true) => {
                return Err(invalid(
                    "an https:// address needs TLS options: at least the CA that signed the broker's certificate (--ca)".into(),
                ));
            }
            (Some(_), false) => {
                return Err(invalid("TLS options need an https:// address".into()));
            }
            (None, false) => {}
        }
        let header = match &options.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        Error::InvalidArgument("the token must be printable ASCII".into())
                    })?,
            ),
            None => None,
        };
        let channel = ep
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(options.keepalive_interval)
            .keep_alive_timeout(options.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            // Subscribe batches arrive in a few large DATA frames, not 16 KiB ones.
            .max_frame_size(Some(1 << 20))
            .connect()
            .await
            .map_err(|e| Error::unreachable(&endpoint, &e))?;
        let mut raw = BrokerClient::with_interceptor(channel, AuthHeader(header))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        if let Some(c) = options.grpc_compression {
            raw = raw
                .send_compressed(c.encoding())
                .accept_compressed(c.encoding());
        }
        Ok(Client {
            raw,
            endpoint,
            options,
        })
    }

    /// The generated gRPC client, for calls this type does not wrap.
    pub fn raw(&self) -> BrokerClient<Transport> {
        self.raw.clone()
    }

    /// The address this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    pub(crate) fn error(&self, status: tonic::Status) -> Error {
        Error::from_status(status, &self.endpoint)
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.options.request_timeout);
        r
    }

    /// Runs an idempotent call, retrying retriable failures with backoff.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(BrokerClient<Transport>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            match call(self.raw.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    let e = self.error(status);
                    if !e.is_retriable() || attempt >= self.options.max_retries {
                        return Err(e);
                    }
                    tokio::time::sleep(self.options.backoff.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Creates a topic. `config` fields left at 0 take the broker's defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        let req = self.request(CreateTopicRequest {
            name: name.to_string(),
            partitions,
            config: Some(config),
            ..Default::default()
        });
        let resp = self
            .raw
            .clone()
            .create_topic(req)
            .await
            .map_err(|s| self.error(s))?;
        resp.into_inner()
            .topic
            .ok_or_else(|| Error::InvalidArgument("the broker answered without a topic".into()))
    }

    /// Changes a topic's settings (fields at 0 keep their value; `reset` names fields,
    /// by their proto names, set back to the broker's default) and adds partitions up to
    /// `partitions` (0 = unchanged).
    pub async fn alter_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        reset: Vec<String>,
    ) -> Result<TopicInfo> {
        let req = self.request(AlterTopicRequest {
            name: name.to_string(),
            partitions,
            config: Some(config),
            reset,
        });
        let resp = self
            .raw
            .clone()
            .alter_topic(req)
            .await
            .map_err(|s| self.error(s))?;
        resp.into_inner()
            .topic
            .ok_or_else(|| Error::InvalidArgument("the broker answered without a topic".into()))
    }

    /// Deletes a topic and its records.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = self.request(DeleteTopicRequest {
            name: name.to_string(),
        });
        self.raw
            .clone()
            .delete_topic(req)
            .await
            .map_err(|s| self.error(s))?;
        Ok(())
    }

    /// Every topic, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let resp = self
            .retrying(|mut c| {
                let r = self.request(ListTopicsRequest {});
                async move { c.list_topics(r).await }
            })
            .await?;
        Ok(resp.topics)
    }

    /// One topic's configuration and partitions.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let resp = self
            .retrying(|mut c| {
                let r = self.request(DescribeTopicRequest {
                    name: name.to_string(),
                });
                async move { c.describe_topic(r).await }
            })
            .await?;
        resp.topic
            .ok_or_else(|| Error::InvalidArgument("the broker answered without a topic".into()))
    }

    /// The nodes of the cluster, as the broker answering sees them.
    pub async fn describe_cluster(&self) -> Result<DescribeClusterResponse> {
        self.retrying(|mut c| {
            let r = self.request(DescribeClusterRequest {});
            async move { c.describe_cluster(r).await }
        })
        .await
    }

    /// Appends one batch (not idempotent: prefer [`crate::Producer`] for retries).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResponse> {
        let req = self.request(request);
        Ok(self
            .raw
            .clone()
            .append(req)
            .await
            .map_err(|s| self.error(s))?
            .into_inner())
    }

    /// Reads from `offset` with the given limits (0 = broker default).
    pub async fn read(&self, request: ReadRequest) -> Result<ReadResponse> {
        self.retrying(|mut c| {
            let r = self.request(request.clone());
            async move { c.read(r).await }
        })
        .await
    }

    /// Commits `offset` (the next offset to read) for `group`.
    pub async fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<()> {
        self.retrying(|mut c| {
            let r = self.request(CommitOffsetRequest {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
                offset,
                metadata: String::new(),
            });
            async move { c.commit_offset(r).await }
        })
        .await?;
        Ok(())
    }

    /// A group's committed offsets and lag per partition of `topic`.
    pub async fn get_offsets(&self, group: &str, topic: &str) -> Result<Vec<PartitionOffsets>> {
        let resp = self
            .retrying(|mut c| {
                let r = self.request(GetOffsetsRequest {
                    group: group.to_string(),
                    topic: topic.to_string(),
                });
                async move { c.get_offsets(r).await }
            })
            .await?;
        Ok(resp.partitions)
    }

    /// Every consumer group, optionally only those on `topic`.
    pub async fn list_groups(&self, topic: Option<&str>) -> Result<Vec<GroupSummary>> {
        let resp = self
            .retrying(|mut c| {
                let r = self.request(ListGroupsRequest {
                    topic: topic.unwrap_or_default().to_string(),
                });
                async move { c.list_groups(r).await }
            })
            .await?;
        Ok(resp.groups)
    }

    /// A group's members, partitions, committed offsets and lag.
    pub async fn describe_group(
        &self,
        group: &str,
        topic: Option<&str>,
    ) -> Result<DescribeGroupResponse> {
        self.retrying(|mut c| {
            let r = self.request(DescribeGroupRequest {
                group: group.to_string(),
                topic: topic.map(str::to_string),
            });
            async move { c.describe_group(r).await }
        })
        .await
    }

    /// Creates a queue on `topic` (idempotent for the same config) and returns it.
    pub async fn create_queue(
        &self,
        topic: &str,
        queue: &str,
        config: QueueConfig,
        start: Option<StartPosition>,
    ) -> Result<QueueInfo> {
        let resp = self
            .retrying(|mut c| {
                let r = self.request(CreateQueueRequest {
                    topic: topic.to_string(),
                    queue: queue.to_string(),
                    config: Some(config.clone()),
                    start,
                });
                async move { c.create_queue(r).await }
            })
            .await?;
        resp.queue
            .ok_or_else(|| Error::InvalidArgument("the broker answered without a queue".into()))
    }

    /// Deletes a queue (its topic and dead-letter topic stay).
    pub async fn delete_queue(&self, topic: &str, queue: &str) -> Result<()> {
        let r = self.request(DeleteQueueRequest {
            topic: topic.to_string(),
            queue: queue.to_string(),
        });
        self.raw
            .clone()
            .delete_queue(r)
            .await
            .map_err(|s| self.error(s))?;
        Ok(())
    }

    /// The queues of `topic`, or of every topic.
    pub async fn list_queues(&self, topic: Option<&str>) -> Result<Vec<QueueInfo>> {
        let resp = self
            .retrying(|mut c| {
                let r = self.request(ListQueuesRequest {
                    topic: topic.unwrap_or_default().to_string(),
                });
                async move { c.list_queues(r).await }
            })
            .await?;
        Ok(resp.queues)
    }

    /// A queue's config, counts and partitions.
    pub async fn describe_queue(&self, topic: &str, queue: &str) -> Result<QueueInfo> {
        let resp = self
            .retrying(|mut c| {
                let r = self.request(DescribeQueueRequest {
                    topic: topic.to_string(),
                    queue: queue.to_string(),
                });
                async move { c.describe_queue(r).await }
            })
            .await?;
        resp.queue
            .ok_or_else(|| Error::InvalidArgument("the broker answered without a queue".into()))
    }

    /// Starts (or extends) a redrive of a queue's dead letters up to its dead-letter
    /// topic's end offset now, at up to `max_per_second` records a second (0 = the
    /// broker's default). Returns the dead-letter offsets it covers; its progress shows in
    /// `QueueInfo.redrive_remaining`. Safe to retry: a repeat covers the same letters.
    pub async fn redrive_queue(
        &self,
        topic: &str,
        queue: &str,
        max_per_second: u32,
    ) -> Result<RedriveQueueResponse> {
        self.retrying(|mut c| {
            let r = self.request(RedriveQueueRequest {
                topic: topic.to_string(),
                queue: queue.to_string(),
                max_per_second,
            });
            async move { c.redrive_queue(r).await }
        })
        .await
    }

    /// Leases records of a queue (a long poll of up to `request.wait_ms`). Not retried: a
    /// retry after a lost answer would lease other records while the first stay leased.
    pub async fn receive(&self, request: ReceiveRequest) -> Result<Vec<spool_proto::v1::Delivery>> {
        let wait = std::time::Duration::from_millis(u64::from(request.wait_ms));
        let mut r = tonic::Request::new(request);
        r.set_timeout(self.options.request_timeout + wait);
        Ok(self
            .raw
            .clone()
            .receive(r)
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .deliveries)
    }

    /// Settles leased records; one outcome per settlement, in order.
    pub async fn settle(&self, request: SettleRequest) -> Result<Vec<SettleOutcome>> {
        let r = self.request(request);
        Ok(self
            .raw
            .clone()
            .settle(r)
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .outcomes)
    }
}

/// Reads the PEM files of `tls` into a rustls client configuration.
fn client_tls(tls: &TlsOptions) -> std::result::Result<ClientTlsConfig, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let ca = tls
        .ca
        .as_deref()
        .ok_or("TLS needs the CA that signed the broker's certificate (--ca)")?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => return Err("a client certificate needs both --cert and --key".into()),
    }
    if let Some(d) = &tls.domain {
        config = config.domain_name(d.clone());
    }
    Ok(config)
}
