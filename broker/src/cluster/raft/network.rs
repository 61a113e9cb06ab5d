//! openraft's network over the nodes' own gRPC service (`spool.internal.v1.Peer`): each
//! Raft message travels serialised in a `RaftMessage`, on one HTTP/2 connection per peer
//! that every group shares.

// openraft's traits fix the error types (StorageError, RPCError), large as they are.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spool_proto::internal::peer_client::PeerClient;
use spool_proto::internal::{RaftKind, RaftMessage};
use tonic::transport::{Channel, Endpoint};

use super::Meta;

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Channels to the peers, one per node, made on first use and shared.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<u64, Channel>>>,
    cluster_id: Arc<Mutex<String>>,
}

impl Peers {
    /// The channel to node `id` at `address` (connected lazily, reconnecting by itself).
    pub fn channel(&self, id: u64, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock();
        if let Some(c) = map.get(&id) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(id, c.clone());
        Ok(c)
    }

    /// The cluster id messages carry ("" until this node knows it).
    pub fn cluster_id(&self) -> String {
        self.cluster_id.lock().clone()
    }

    pub fn set_cluster_id(&self, id: &str) {
        *self.cluster_id.lock() = id.to_string();
    }
}

/// Makes one [`Link`] per peer for a group.
pub struct Network {
    pub peers: Peers,
    pub group: String,
}

impl RaftNetworkFactory<Meta> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Link {
        Link {
            target,
            channel: self.peers.channel(target, &node.addr),
            peers: self.peers.clone(),
            group: self.group.clone(),
        }
    }
}

/// One group's messages to one peer.
pub struct Link {
    target: u64,
    channel: Result<Channel, tonic::transport::Error>,
    peers: Peers,
    group: String,
}

impl Link {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RaftKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = match &self.channel {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
        };
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftMessage {
            cluster_id: self.peers.cluster_id(),
            group: self.group.clone(),
            kind: kind as i32,
            payload: payload.into(),
        });
        request.set_timeout(option.hard_ttl());
        let reply = PeerClient::new(channel)
            .raft(request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled => RPCError::Unreachable(Unreachable::new(&status)),
                _ => RPCError::Network(NetworkError::new(&status)),
            })?
            .into_inner();
        let result: Result<Resp, RaftError<u64, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<Meta> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Meta>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(RaftKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Meta>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(RaftKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(RaftKind::Vote, &rpc, &option).await
    }
}
