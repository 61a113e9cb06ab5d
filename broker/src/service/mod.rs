//! The `spool.v1.Broker` gRPC service: one file per RPC family, errors mapped in
//! `status.rs`.

mod append;
mod consume;
mod convert;
mod groups;
mod offsets;
mod read;
pub mod status;
mod topics;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use spool_proto::v1::broker_server::Broker;
use spool_proto::v1::*;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::offsets::OffsetStore;
use crate::registry::Registry;

/// Everything a request handler may touch.
pub struct Inner {
    pub config: Arc<BrokerConfig>,
    pub registry: Registry,
    pub offsets: OffsetStore,
    pub metrics: Metrics,
    pub groups: Arc<crate::groups::Coordinator>,
    /// Cancelled when the broker shuts down: open streams end with `UNAVAILABLE`.
    pub shutdown: CancellationToken,
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

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn create_topic(
        &self,
        req: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        Ok(Response::new(
            topics::create(&self.inner, req.into_inner()).await?,
        ))
    }

    async fn delete_topic(
        &self,
        req: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Ok(Response::new(
            topics::delete(&self.inner, req.into_inner()).await?,
        ))
    }

    async fn list_topics(
        &self,
        _req: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        Ok(Response::new(topics::list(&self.inner)))
    }

    async fn describe_topic(
        &self,
        req: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        Ok(Response::new(topics::describe(
            &self.inner,
            req.into_inner(),
        )?))
    }

    async fn append(
        &self,
        req: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        Ok(Response::new(
            append::unary(&self.inner, req.into_inner()).await?,
        ))
    }

    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        req: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let stream = append::pipelined(Arc::clone(&self.inner), req.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        Ok(Response::new(
            read::read(&self.inner, req.into_inner()).await?,
        ))
    }

    type SubscribeStream = BoxStream<SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = read::subscribe(&self.inner, req.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn commit_offset(
        &self,
        req: Request<CommitOffsetRequest>,
    ) -> Result<Response<CommitOffsetResponse>, Status> {
        Ok(Response::new(
            offsets::commit(&self.inner, req.into_inner()).await?,
        ))
    }

    async fn get_offsets(
        &self,
        req: Request<GetOffsetsRequest>,
    ) -> Result<Response<GetOffsetsResponse>, Status> {
        Ok(Response::new(offsets::get(&self.inner, req.into_inner())?))
    }

    type ConsumeStream = BoxStream<ConsumeResponse>;

    async fn consume(
        &self,
        req: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let stream = groups::consume(Arc::clone(&self.inner), req.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_groups(
        &self,
        req: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        Ok(Response::new(groups::list(&self.inner, req.into_inner())?))
    }

    async fn describe_group(
        &self,
        req: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        Ok(Response::new(groups::describe(
            &self.inner,
            req.into_inner(),
        )?))
    }
}
