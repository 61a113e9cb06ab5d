//! The `spool.v1.Broker` gRPC service: one file per RPC family, errors mapped in
//! `status.rs`.

mod append;
pub mod consume;
pub(crate) mod convert;
mod groups;
mod offsets;
mod queues;
mod read;
pub mod status;
pub(crate) mod topics;
mod work;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use spool_proto::v1::broker_server::Broker;
use spool_proto::v1::*;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Operation as Op, Principal, Resource, principal_of};
use crate::config::BrokerConfig;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::offsets::OffsetStore;
use crate::quota::Direction;
use crate::registry::Registry;

/// Everything a request handler may touch.
pub struct Inner {
    pub config: Arc<BrokerConfig>,
    pub auth: crate::auth::Auth,
    pub quotas: crate::quota::Quotas,
    /// Room for queued Subscribe messages across all streams, in KiB.
    pub stream_budget: Arc<tokio::sync::Semaphore>,
    pub registry: Arc<Registry>,
    pub offsets: OffsetStore,
    pub queues: Arc<crate::queue::Queues>,
    pub metrics: Metrics,
    pub groups: Arc<crate::groups::Coordinator>,
    /// Wakes the partition health watcher (`crate::health`).
    pub partition_events: crate::health::PartitionEvents,
    /// Cancelled when the broker shuts down: open streams end with `UNAVAILABLE`.
    pub shutdown: CancellationToken,
    /// Activity and lag over the last minutes, for the console.
    pub history: crate::console::history::History,
    /// The nodes and where each partition lives.
    pub cluster: crate::cluster::Cluster,
}

/// The tonic service: a cheap handle on [`Inner`].
#[derive(Clone)]
pub struct BrokerService {
    inner: Arc<Inner>,
}

impl BrokerService {
    pub fn new(inner: Arc<Inner>) -> BrokerService {
        BrokerService { inner }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Delays a request by the principal's quota, or refuses it past the bound.
pub async fn throttle(inner: &Inner, who: &Principal, dir: Direction, bytes: u64) -> Result<()> {
    match inner.quotas.reserve(who, dir, bytes) {
        Ok(wait) => {
            if !wait.is_zero() {
                inner.metrics.observe_quota(who, dir, Some(wait));
                tokio::time::sleep(wait).await;
            }
            Ok(())
        }
        Err(e) => {
            inner.metrics.observe_quota(who, dir, None);
            Err(e)
        }
    }
}

// Every RPC checks here what its principal may do; handlers below get checked input.
#[tonic::async_trait]
impl Broker for BrokerService {
    async fn create_topic(
        &self,
        req: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Create, Resource::Topic(&req.name))?;
        Ok(Response::new(topics::create(&self.inner, req).await?))
    }

    async fn alter_topic(
        &self,
        req: Request<AlterTopicRequest>,
    ) -> Result<Response<AlterTopicResponse>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Alter, Resource::Topic(&req.name))?;
        Ok(Response::new(topics::alter(&self.inner, req).await?))
    }

    async fn delete_topic(
        &self,
        req: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Delete, Resource::Topic(&req.name))?;
        Ok(Response::new(topics::delete(&self.inner, req).await?))
    }

    async fn list_topics(
        &self,
        req: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let who = principal_of(&req);
        let mut resp = topics::list(&self.inner);
        resp.topics.retain(|t| {
            self.inner
                .auth
                .allows(&who, Op::Describe, Resource::Topic(&t.name))
        });
        Ok(Response::new(resp))
    }

    async fn describe_topic(
        &self,
        req: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Describe, Resource::Topic(&req.name))?;
        Ok(Response::new(topics::describe(&self.inner, req)?))
    }

    async fn append(
        &self,
        req: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let who = principal_of(&req);
        Ok(Response::new(
            append::unary(&self.inner, &who, req.into_inner()).await?,
        ))
    }

    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        req: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let who = principal_of(&req);
        let stream = append::pipelined(Arc::clone(&self.inner), who, req.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Read, Resource::Topic(&req.topic))?;
        Ok(Response::new(read::read(&self.inner, &who, req).await?))
    }

    type SubscribeStream = BoxStream<SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Read, Resource::Topic(&req.topic))?;
        if req
            .start
            .is_some_and(|s| s.kind == start_position::Kind::Committed as i32)
        {
            self.inner
                .auth
                .check(&who, Op::Describe, Resource::Group(&req.group))?;
        }
        let stream = read::subscribe(&self.inner, who, req).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn commit_offset(
        &self,
        req: Request<CommitOffsetRequest>,
    ) -> Result<Response<CommitOffsetResponse>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Commit, Resource::Group(&req.group))?;
        self.inner
            .auth
            .check(&who, Op::Describe, Resource::Topic(&req.topic))?;
        Ok(Response::new(offsets::commit(&self.inner, req).await?))
    }

    async fn get_offsets(
        &self,
        req: Request<GetOffsetsRequest>,
    ) -> Result<Response<GetOffsetsResponse>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Describe, Resource::Group(&req.group))?;
        self.inner
            .auth
            .check(&who, Op::Describe, Resource::Topic(&req.topic))?;
        Ok(Response::new(offsets::get(&self.inner, req)?))
    }

    type ConsumeStream = BoxStream<ConsumeResponse>;

    async fn consume(
        &self,
        req: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        // The join names the group and topic: `consume::start` checks read on the topic
        // and commit on the group once it has it.
        let who = principal_of(&req);
        let stream = groups::consume(Arc::clone(&self.inner), who, req.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_groups(
        &self,
        req: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let who = principal_of(&req);
        let mut resp = groups::list(&self.inner, req.into_inner())?;
        resp.groups.retain(|g| {
            self.inner
                .auth
                .allows(&who, Op::Describe, Resource::Group(&g.group))
        });
        Ok(Response::new(resp))
    }

    async fn describe_group(
        &self,
        req: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let who = principal_of(&req);
        let req = req.into_inner();
        self.inner
            .auth
            .check(&who, Op::Describe, Resource::Group(&req.group))?;
        if let Some(t) = &req.topic {
            self.inner
                .auth
                .check(&who, Op::Describe, Resource::Topic(t))?;
        }
        // Offsets, end offsets and lag of a topic are topic data: shown only where the
        // principal may describe the topic, as GetOffsets does.
        let mut resp = groups::describe(&self.inner, req)?;
        resp.topics.retain(|t| {
            self.inner
                .auth
                .allows(&who, Op::Describe, Resource::Topic(&t.topic))
        });
        Ok(Response::new(resp))
    }
    async fn create_queue(
        &self,
        req: Request<CreateQueueRequest>,
    ) -> Result<Response<CreateQueueResponse>, Status> {
        let who = principal_of(&req);
        Ok(Response::new(
            queues::create(&self.inner, &who, req.into_inner()).await?,
        ))
    }

    async fn delete_queue(
        &self,
        req: Request<DeleteQueueRequest>,
    ) -> Result<Response<DeleteQueueResponse>, Status> {
        let who = principal_of(&req);
        Ok(Response::new(
            queues::delete(&self.inner, &who, req.into_inner()).await?,
        ))
    }

    async fn list_queues(
        &self,
        req: Request<ListQueuesRequest>,
    ) -> Result<Response<ListQueuesResponse>, Status> {
        let who = principal_of(&req);
        Ok(Response::new(
            queues::list(&self.inner, &who, req.into_inner()).await?,
        ))
    }

    async fn describe_queue(
        &self,
        req: Request<DescribeQueueRequest>,
    ) -> Result<Response<DescribeQueueResponse>, Status> {
        let who = principal_of(&req);
        Ok(Response::new(
            queues::describe(&self.inner, &who, req.into_inner()).await?,
        ))
    }

    async fn redrive_queue(
        &self,
        req: Request<RedriveQueueRequest>,
    ) -> Result<Response<RedriveQueueResponse>, Status> {
        let who = principal_of(&req);
        Ok(Response::new(
            queues::redrive(&self.inner, &who, req.into_inner()).await?,
        ))
    }

    async fn receive(
        &self,
        req: Request<ReceiveRequest>,
    ) -> Result<Response<ReceiveResponse>, Status> {
        let who = principal_of(&req);
        Ok(Response::new(
            queues::receive(&self.inner, &who, req.into_inner()).await?,
        ))
    }

    async fn settle(
        &self,
        req: Request<SettleRequest>,
    ) -> Result<Response<SettleResponse>, Status> {
        let who = principal_of(&req);
        Ok(Response::new(
            queues::settle(&self.inner, &who, req.into_inner()).await?,
        ))
    }

    type WorkStream = BoxStream<WorkResponse>;

    async fn work(
        &self,
        req: Request<Streaming<WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let who = principal_of(&req);
        let stream = work::work(Arc::clone(&self.inner), who, req.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn describe_cluster(
        &self,
        req: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let who = principal_of(&req);
        self.inner
            .auth
            .check(&who, Op::Describe, Resource::Cluster)?;
        Ok(Response::new(
            self.inner.cluster.describe(&self.inner.registry),
        ))
    }
}
