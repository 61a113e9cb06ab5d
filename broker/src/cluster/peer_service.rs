//! `spool.internal.v1.Peer`, the service nodes call on each other: Raft messages for the
//! metadata group, writes forwarded to its leader, and pings. A message naming another
//! cluster than this node's is refused.

use std::sync::Arc;

use spool_proto::internal::peer_server::Peer;
use spool_proto::internal::*;
use tonic::{Request, Response, Status};

use super::raft::{META_GROUP, MetaGroup};
use crate::service::Inner;

pub struct PeerService {
    pub inner: Arc<Inner>,
}

impl PeerService {
    fn check(&self, cluster_id: &str, group: &str) -> Result<&MetaGroup, Status> {
        let ours = self
            .inner
            .cluster
            .peers()
            .map(|p| p.cluster_id())
            .unwrap_or_default();
        if !ours.is_empty() && !cluster_id.is_empty() && ours != cluster_id {
            return Err(Status::failed_precondition(format!(
                "this node belongs to cluster {ours}, not {cluster_id}"
            )));
        }
        if group != META_GROUP {
            return Err(Status::not_found(format!("no Raft group {group:?} here")));
        }
        self.inner
            .cluster
            .meta()
            .ok_or_else(|| Status::unavailable("this node's metadata group has not started yet"))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let m = req.into_inner();
        let meta = self.check(&m.cluster_id, &m.group)?;
        let kind = RaftKind::try_from(m.kind).unwrap_or(RaftKind::Unspecified);
        let payload = meta.handle_raft(kind, &m.payload).await?;
        Ok(Response::new(RaftReply {
            payload: payload.into(),
        }))
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let m = req.into_inner();
        let meta = self.check(&m.cluster_id, &m.group)?;
        let (result, index) = meta.handle_propose(&m.command).await?;
        Ok(Response::new(ProposeReply {
            result: result.into(),
            index,
        }))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let _ = req;
        Ok(Response::new(PingReply {
            node_id: self.inner.cluster.node_id(),
            cluster_id: self
                .inner
                .cluster
                .peers()
                .map(|p| p.cluster_id())
                .unwrap_or_default(),
        }))
    }
}
