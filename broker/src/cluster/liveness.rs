//! Which peers answer, as this node sees it: every node pings the others a few times a
//! heartbeat, and a peer that answered within [`UP_WINDOW`] is `NODE_STATE_UP`. The same
//! ping, at start, refuses a data directory of another cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use spool_proto::internal::PingRequest;
use spool_proto::internal::peer_client::PeerClient;
use tokio_util::sync::CancellationToken;

use super::Node;
use super::raft::network::Peers;
use crate::error::{Error, Result};

/// A peer that answered a ping this recently is up.
const UP_WINDOW: Duration = Duration::from_secs(2);

/// How long one ping may take.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// When each peer last answered.
#[derive(Clone, Default)]
pub struct Liveness {
    seen: Arc<Mutex<HashMap<u32, Instant>>>,
}

impl Liveness {
    pub fn is_up(&self, id: u32) -> bool {
        self.seen
            .lock()
            .get(&id)
            .is_some_and(|t| t.elapsed() < UP_WINDOW)
    }

    /// Refuses to start if a reachable peer belongs to another cluster than this data
    /// directory (both named: a fresh node knows no id yet and joins).
    pub async fn check_cluster_id(&self, peers: &Peers, this: u32, nodes: &[Node]) -> Result<()> {
        let ours = peers.cluster_id();
        if ours.is_empty() {
            return Ok(());
        }
        let answers = futures::future::join_all(
            nodes
                .iter()
                .filter(|n| n.id != this)
                .map(|n| ping(peers, this, n)),
        )
        .await;
        for (node, theirs) in answers.into_iter().flatten() {
            self.seen.lock().insert(node, Instant::now());
            if !theirs.is_empty() && theirs != ours {
                return Err(Error::FailedPrecondition(format!(
                    "node {node} belongs to cluster {theirs}, but this data directory to cluster {ours}: start this node with an empty --data-dir to join as a fresh replica, or point --peers at its own cluster"
                )));
            }
        }
        Ok(())
    }
}

/// Pings `node`: its id and cluster id, or `None` if it does not answer.
async fn ping(peers: &Peers, this: u32, node: &Node) -> Option<(u32, String)> {
    let channel = peers.channel(u64::from(node.id), &node.address).ok()?;
    let mut req = tonic::Request::new(PingRequest {
        cluster_id: peers.cluster_id(),
        from: this,
    });
    req.set_timeout(PING_TIMEOUT);
    let reply = tokio::time::timeout(PING_TIMEOUT, PeerClient::new(channel).ping(req))
        .await
        .ok()?
        .ok()?
        .into_inner();
    (reply.node_id == node.id).then_some((reply.node_id, reply.cluster_id))
}

/// Pings every other node every few heartbeats until `shutdown`.
pub async fn run(
    liveness: Liveness,
    peers: Peers,
    this: u32,
    nodes: Vec<Node>,
    heartbeat_ms: u64,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis((heartbeat_ms * 3).max(200)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let answers = futures::future::join_all(
            nodes
                .iter()
                .filter(|n| n.id != this)
                .map(|n| ping(&peers, this, n)),
        )
        .await;
        let now = Instant::now();
        let mut seen = liveness.seen.lock();
        for (node, _) in answers.into_iter().flatten() {
            seen.insert(node, now);
        }
    }
}
