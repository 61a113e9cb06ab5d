//! Consensus: the one module that knows openraft (pinned `=0.9.25`, see ARCHITECTURE.md,
//! *Cluster*), so an upgrade touches this tree only. The rest of the broker sees a
//! [`MetaGroup`]: propose a command, read the catalog, ask who leads.
//!
//! - `log_store`: a group's Raft log on a storage-engine log, vote in a state file.
//! - `machine`: the metadata state machine over the catalog.
//! - `network`: Raft messages over the nodes' gRPC service.

mod log_store;
mod machine;
pub mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use spool_proto::internal::RaftKind;
use spool_proto::internal::peer_client::PeerClient;
use spool_storage::Storage;

use super::Effects;
use super::catalog::{Catalog, Command, Outcome};
use super::config::{ClusterConfig, Peer};
use crate::error::{Error, Result};

openraft::declare_raft_types!(
    /// The metadata group's types: catalog commands in, outcomes out.
    pub Meta:
        D = Command,
        R = Outcome,
);

/// The metadata group's name in messages and on disk.
pub const META_GROUP: &str = "meta";

/// How long a write waits for a leader before it is `UNAVAILABLE`.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// How a group looks from this node right now.
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    /// 0 = no leader known.
    pub leader: u32,
    /// Leading: the peers whose log matches up to the leader's commit (this node
    /// included). Not leading: empty (only the leader knows).
    pub in_sync: Vec<u32>,
}

/// This node's member of the metadata group.
pub struct MetaGroup {
    raft: Raft<Meta>,
    machine: Arc<machine::Shared>,
    peers: network::Peers,
    addresses: BTreeMap<u64, String>,
}

impl MetaGroup {
    /// Opens the group's log and state under the storage root and starts its Raft; on a
    /// fresh data directory, proposes the configured peers as the first membership (every
    /// node does, with the same peers, which openraft allows).
    pub async fn start(
        storage: Arc<Storage>,
        config: &ClusterConfig,
        nodes: &[Peer],
        effects: Arc<dyn Effects>,
        peers: network::Peers,
    ) -> Result<MetaGroup> {
        let this = u64::from(config.node_id);
        let ids: Vec<u32> = nodes.iter().map(|p| p.id).collect();
        let name = format!("internal/raft/{META_GROUP}");
        let machine_path = storage
            .root()
            .join(format!("internal/raft/{META_GROUP}.applied.json"));
        let machine_peers = peers.clone();
        let (store, machine) = tokio::task::spawn_blocking(move || -> Result<_> {
            std::fs::create_dir_all(storage.root().join("internal/raft")).map_err(|e| {
                Error::io("create directory", storage.root().join("internal/raft"), e)
            })?;
            let store = log_store::LogStore::<Meta>::open(Arc::clone(&storage), &name)?;
            let machine = machine::Machine::open(machine_path, ids, effects, machine_peers)?;
            Ok((store, machine))
        })
        .await??;
        let shared = Arc::clone(&machine.shared);
        if let Some(id) = shared.applied.read().catalog.cluster_id() {
            peers.set_cluster_id(id);
        }
        let raft_config = openraft::Config {
            cluster_name: "spool".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            // The metadata log is small (topic changes): kept whole, never purged, so a
            // node that was away or lost its disk catches up by replaying it.
            snapshot_policy: SnapshotPolicy::Never,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::invalid(format!("cluster timing: {e}")))?;
        let network = network::Network {
            peers: peers.clone(),
            group: META_GROUP.into(),
        };
        let raft = Raft::new(this, Arc::new(raft_config), network, store, machine)
            .await
            .map_err(|e| Error::Task(format!("starting the metadata group: {e}")))?;
        let members: BTreeMap<u64, BasicNode> = nodes
            .iter()
            .map(|p| (u64::from(p.id), BasicNode::new(&p.address)))
            .collect();
        let addresses = nodes
            .iter()
            .map(|p| (u64::from(p.id), p.address.clone()))
            .collect();
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(Error::Task(format!("forming the cluster: {e}"))),
        }
        tokio::spawn(name_the_cluster(raft.clone(), Arc::clone(&shared), this));
        Ok(MetaGroup {
            raft,
            machine: shared,
            peers,
            addresses,
        })
    }

    /// The catalog as this node has applied it.
    pub fn catalog(&self) -> Catalog {
        self.machine.applied.read().catalog.clone()
    }

    /// Who leads and which peers keep up, as this node sees it.
    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.map_or(0, |l| l as u32);
        let mut in_sync = Vec::new();
        if m.state == ServerState::Leader
            && let Some(rep) = &m.replication
        {
            let commit = m.last_applied.map(|l| l.index);
            let mut set = BTreeSet::new();
            for (id, matched) in rep {
                if matched.map(|l| l.index) >= commit {
                    set.insert(*id as u32);
                }
            }
            in_sync = set.into_iter().collect();
        }
        GroupStatus { leader, in_sync }
    }

    /// Applies `command` through the group and returns its outcome once this node has
    /// applied it too (so the caller reads its own write here). A follower forwards it to
    /// the leader; with no leader for [`LEADER_WAIT`] it is `UNAVAILABLE`.
    pub async fn propose(&self, command: Command) -> Result<Outcome> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let leader = match self.raft.client_write(command.clone()).await {
                Ok(resp) => return Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
                Err(e) => return Err(Error::Unavailable(format!("metadata group: {e}"))),
            };
            if let Some(leader) = leader
                && let Some(address) = self.addresses.get(&leader)
            {
                match self.forward(leader, address, &command).await {
                    Ok(outcome) => return Ok(outcome),
                    Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                    Err(e) => {
                        tracing::debug!(leader, error = %e, "forwarding to the metadata leader failed; retrying")
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(
                    "the metadata group has no leader (an election, or this node is cut off from a majority of the cluster); retry".into(),
                ));
            }
            // Wait for the leader to change (or appear), not for a fixed time.
            let known = leader;
            let waiter = self.raft.wait(Some(deadline - tokio::time::Instant::now()));
            let _ = waiter
                .metrics(
                    |m| m.current_leader != known && m.current_leader.is_some(),
                    "a new leader",
                )
                .await;
        }
    }

    async fn forward(&self, leader: u64, address: &str, command: &Command) -> Result<Outcome> {
        let channel = self
            .peers
            .channel(leader, address)
            .map_err(|e| Error::Unavailable(format!("node {leader} at {address}: {e}")))?;
        let mut req = tonic::Request::new(spool_proto::internal::ProposeRequest {
            cluster_id: self.peers.cluster_id(),
            group: META_GROUP.into(),
            command: serde_json::to_vec(command)
                .map_err(|e| Error::Task(e.to_string()))?
                .into(),
        });
        req.set_timeout(LEADER_WAIT);
        let reply = PeerClient::new(channel)
            .propose(req)
            .await
            .map_err(|s| {
                Error::Unavailable(format!("metadata leader node {leader}: {}", s.message()))
            })?
            .into_inner();
        let outcome: Outcome =
            serde_json::from_slice(&reply.result).map_err(|e| Error::Task(e.to_string()))?;
        self.wait_applied(reply.index).await?;
        Ok(outcome)
    }

    /// Waits until this node has applied the entry at `index`.
    async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut rx = self.machine.applied_index.subscribe();
        match tokio::time::timeout(LEADER_WAIT, rx.wait_for(|&i| i >= index)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unavailable(format!(
                "this node has not yet applied metadata entry {index}; retry"
            ))),
        }
    }

    /// A `Propose` from a peer: applied here if this node leads, else `UNAVAILABLE`
    /// (the forwarder looks for the leader again).
    pub async fn handle_propose(&self, command: &[u8]) -> Result<(Vec<u8>, u64)> {
        let command: Command = serde_json::from_slice(command)
            .map_err(|e| Error::invalid(format!("undecodable metadata command: {e}")))?;
        match self.raft.client_write(command).await {
            Ok(resp) => Ok((
                serde_json::to_vec(&resp.data).map_err(|e| Error::Task(e.to_string()))?,
                resp.log_id.index,
            )),
            Err(e) => Err(Error::Unavailable(format!("not the metadata leader: {e}"))),
        }
    }

    /// A Raft message from a peer: handed to openraft, its result serialised back.
    pub async fn handle_raft(&self, kind: RaftKind, payload: &[u8]) -> Result<Vec<u8>> {
        fn decode<T: serde::de::DeserializeOwned>(p: &[u8]) -> Result<T> {
            serde_json::from_slice(p)
                .map_err(|e| Error::invalid(format!("undecodable Raft message: {e}")))
        }
        let out = match kind {
            RaftKind::AppendEntries => {
                serde_json::to_vec(&self.raft.append_entries(decode(payload)?).await)
            }
            RaftKind::Vote => serde_json::to_vec(&self.raft.vote(decode(payload)?).await),
            RaftKind::InstallSnapshot => {
                serde_json::to_vec(&self.raft.install_snapshot(decode(payload)?).await)
            }
            RaftKind::Unspecified => return Err(Error::invalid("RaftMessage.kind is unset")),
        };
        out.map_err(|e| Error::Task(e.to_string()))
    }

    /// Stops the group's Raft (its log and state are durable already).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping the metadata group");
        }
    }
}

/// Until the cluster has an id, whichever node leads proposes one (the first applied
/// wins): a random 64-bit name, so two clusters' nodes refuse each other's messages.
async fn name_the_cluster(raft: Raft<Meta>, machine: Arc<machine::Shared>, this: u64) {
    use std::hash::BuildHasher;
    let mut metrics = raft.metrics();
    while machine.applied.read().catalog.cluster_id().is_none() {
        if metrics.borrow().state == ServerState::Leader {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let id = std::collections::hash_map::RandomState::new().hash_one((
                nanos,
                std::process::id(),
                this,
            ));
            match raft
                .client_write(Command::SetClusterId(format!("{id:016x}")))
                .await
            {
                Ok(_) => continue,
                Err(e) => tracing::debug!(error = %e, "naming the cluster; retrying as leader"),
            }
        }
        // Wait for the next change of state (a leadership), not for a fixed time.
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
