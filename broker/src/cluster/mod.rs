//! The cluster as this node sees it: which nodes there are, who leads the metadata, and
//! where each partition lives. See ARCHITECTURE.md, *Cluster*.
//!
//! Alone (no `--peers`), a broker is node 1, the leader and only replica of every
//! partition and the metadata leader, with no consensus anywhere. With peers, topics are
//! metadata replicated through the metadata Raft group (`raft`): every node applies the
//! same [`catalog::Command`]s in the same order, and [`Effects`] makes its local topics
//! follow. This module is the one place the service asks about placement.
//!
//! - `config`: `--node-id`, `--peers` and the Raft timings.
//! - `catalog`: topics and their replicas, as the metadata group agrees on them.
//! - `identity`: the data directory remembers which node of which peers it belongs to.
//! - `liveness`: which peers answer, as this node sees it.
//! - `local`: the local side effects of applied metadata.
//! - `peer_service`: the service nodes call on each other.
//! - `raft`: openraft, behind one module.

pub mod catalog;
pub mod config;
mod identity;
mod liveness;
pub mod local;
pub mod peer_service;
pub mod raft;

use std::sync::{Arc, OnceLock};

use spool_proto::v1;

use crate::error::{Error, Result};
use crate::registry::Registry;
use catalog::{Catalog, Command};
use config::ClusterConfig;

/// The id of a broker running alone.
const SINGLE_NODE_ID: u32 = 1;

/// The most copies a replicated topic gets when its creator names none.
const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: u32,
    /// Its gRPC address, as peers and clients reach it.
    pub address: String,
}

/// Where a partition lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// 0 = no leader right now.
    pub leader: u32,
    /// Preferred leader first.
    pub replicas: Vec<u32>,
    /// Replicas caught up with the leader's commit, the leader included.
    pub in_sync: Vec<u32>,
}

/// The local consequences of applied metadata, so a node's topics follow the catalog.
/// Both run blocking (off the async threads) and must be idempotent: after a crash, the
/// batch being applied is applied again.
pub trait Effects: Send + Sync + 'static {
    /// Makes this node's topics reflect `command`, just applied to `catalog`.
    fn apply(&self, command: &Command, catalog: &Catalog) -> Result<()>;
    /// Makes this node's topics match `catalog` as a whole (after a snapshot).
    fn reconcile(&self, catalog: &Catalog) -> Result<()>;
}

/// Checks the data directory belongs to the node `config` describes (recording it on a
/// fresh directory), before the broker serves from it. Blocking.
pub fn check_identity(
    config: &ClusterConfig,
    data_dir: &std::path::Path,
    has_topics: bool,
) -> Result<()> {
    let peers = config.parse_peers().map_err(Error::invalid)?;
    identity::check(data_dir, config.node_id, &peers, has_topics)
}

/// A node of several: its peers, and the metadata group once started.
struct Replicated {
    config: ClusterConfig,
    meta: OnceLock<raft::MetaGroup>,
    peers: raft::network::Peers,
    liveness: liveness::Liveness,
}

/// The nodes and this node's place among them.
pub struct Cluster {
    this: Node,
    nodes: Vec<Node>,
    replicated: Option<Replicated>,
}

impl Cluster {
    /// A broker alone: node 1 at `address`.
    pub fn single(address: String) -> Cluster {
        let this = Node {
            id: SINGLE_NODE_ID,
            address,
        };
        Cluster {
            nodes: vec![this.clone()],
            this,
            replicated: None,
        }
    }

    /// The cluster `config` describes; alone (at `address`) without peers.
    pub fn new(config: &ClusterConfig, address: String) -> Result<Cluster> {
        let peers = config.parse_peers().map_err(Error::invalid)?;
        if peers.is_empty() {
            return Ok(Cluster::single(address));
        }
        let nodes: Vec<Node> = peers
            .iter()
            .map(|p| Node {
                id: p.id,
                address: p.address.clone(),
            })
            .collect();
        let this = nodes
            .iter()
            .find(|n| n.id == config.node_id)
            .cloned()
            .expect("parse_peers checks this node is a peer");
        Ok(Cluster {
            this,
            nodes,
            replicated: Some(Replicated {
                config: config.clone(),
                meta: OnceLock::new(),
                peers: raft::network::Peers::default(),
                liveness: liveness::Liveness::default(),
            }),
        })
    }

    /// Whether this broker is one node of several.
    pub fn is_replicated(&self) -> bool {
        self.replicated.is_some()
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.this.id
    }

    /// Starts the metadata group and the peer pings (a node of several; alone, nothing).
    pub async fn start(
        &self,
        storage: Arc<spool_storage::Storage>,
        effects: Arc<dyn Effects>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<()> {
        let Some(r) = &self.replicated else {
            return Ok(());
        };
        let peers: Vec<config::Peer> = self
            .nodes
            .iter()
            .map(|n| config::Peer {
                id: n.id,
                address: n.address.clone(),
            })
            .collect();
        let group =
            raft::MetaGroup::start(storage, &r.config, &peers, effects, r.peers.clone()).await?;
        r.liveness
            .check_cluster_id(&r.peers, self.this.id, &self.nodes)
            .await?;
        let _ = r.meta.set(group);
        tokio::spawn(liveness::run(
            r.liveness.clone(),
            r.peers.clone(),
            self.this.id,
            self.nodes.clone(),
            r.config.heartbeat_ms,
            shutdown,
        ));
        Ok(())
    }

    /// The metadata group (a node of several, once started).
    pub fn meta(&self) -> Option<&raft::MetaGroup> {
        self.replicated.as_ref().and_then(|r| r.meta.get())
    }

    /// The peers' channels and the cluster id messages carry (a node of several).
    pub fn peers(&self) -> Option<&raft::network::Peers> {
        self.replicated.as_ref().map(|r| &r.peers)
    }

    /// Applies `command` through the metadata group: `UNAVAILABLE` before it has started
    /// or while it has no leader.
    pub async fn propose(&self, command: Command) -> Result<catalog::Outcome> {
        match self.meta() {
            Some(meta) => meta.propose(command).await,
            None => Err(Error::Unavailable(
                "the metadata group has not started yet; retry".into(),
            )),
        }
    }

    /// The replication factor a `CreateTopic` asking for `requested` gets: 0 = min(3,
    /// nodes); more than the nodes is refused, saying how many there are.
    pub fn replication_factor(&self, requested: u32) -> Result<u32> {
        let nodes = self.nodes.len() as u32;
        match requested {
            0 => Ok(DEFAULT_REPLICATION_FACTOR.min(nodes)),
            n if n > nodes => Err(Error::invalid(format!(
                "replication_factor {n} is more than the {nodes} node(s) of this cluster; ask for at most {nodes}, or 0 for the default"
            ))),
            n => Ok(n),
        }
    }

    /// Where partition `partition` of `topic` lives. Alone, this node leads and holds
    /// everything. In a cluster the catalog names the replicas; no partition has a
    /// leader yet (partition data is not replicated in this build: data RPCs are refused).
    pub fn placement(&self, topic: &str, partition: u32) -> Placement {
        match self.meta() {
            None if self.replicated.is_none() => Placement {
                leader: self.this.id,
                replicas: vec![self.this.id],
                in_sync: vec![self.this.id],
            },
            meta => Placement {
                leader: 0,
                replicas: meta
                    .and_then(|m| {
                        m.catalog()
                            .topics
                            .get(topic)
                            .and_then(|t| t.replicas.get(partition as usize).cloned())
                    })
                    .unwrap_or_default(),
                in_sync: Vec::new(),
            },
        }
    }

    /// How many copies each partition of `topic` has.
    pub fn copies(&self, topic: &str) -> u32 {
        match self.meta() {
            Some(m) => m
                .catalog()
                .topics
                .get(topic)
                .map_or(0, |t| t.replication_factor),
            None => 1,
        }
    }

    /// `DescribeCluster`: every node with the partitions it leads and follows.
    pub fn describe(&self, registry: &Registry) -> v1::DescribeClusterResponse {
        let Some(r) = &self.replicated else {
            let partitions: u32 = registry
                .list()
                .iter()
                .map(|t| t.partitions.len() as u32)
                .sum();
            return v1::DescribeClusterResponse {
                nodes: vec![v1::NodeInfo {
                    node_id: self.this.id,
                    address: self.this.address.clone(),
                    state: v1::NodeState::Up as i32,
                    leading: partitions,
                    following: 0,
                }],
                metadata_leader: self.this.id,
            };
        };
        let catalog = self.meta().map(|m| m.catalog()).unwrap_or_default();
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let following = catalog
                    .topics
                    .values()
                    .flat_map(|t| &t.replicas)
                    .filter(|replicas| replicas.contains(&n.id))
                    .count() as u32;
                let up = n.id == self.this.id || r.liveness.is_up(n.id);
                v1::NodeInfo {
                    node_id: n.id,
                    address: n.address.clone(),
                    state: if up {
                        v1::NodeState::Up
                    } else {
                        v1::NodeState::Down
                    } as i32,
                    leading: 0,
                    following,
                }
            })
            .collect();
        v1::DescribeClusterResponse {
            nodes,
            metadata_leader: self.meta().map_or(0, |m| m.status().leader),
        }
    }

    /// Stops the metadata group.
    pub async fn shutdown(&self) {
        if let Some(m) = self.meta() {
            m.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_holds_one_copy_and_refuses_more() {
        let c = Cluster::single("127.0.0.1:7450".into());
        assert_eq!(c.replication_factor(0).unwrap(), 1);
        assert_eq!(c.replication_factor(1).unwrap(), 1);
        let e = c.replication_factor(3).unwrap_err().to_string();
        assert!(e.contains("more than the 1 node"), "{e}");
        let p = c.placement("t", 0);
        assert_eq!((p.leader, p.replicas, p.in_sync), (1, vec![1], vec![1]));
    }

    #[test]
    fn three_peers_default_to_three_copies() {
        let config = ClusterConfig {
            node_id: 2,
            peers: "1=a:1,2=b:2,3=c:3".into(),
            ..ClusterConfig::default()
        };
        let c = Cluster::new(&config, "0.0.0.0:2".into()).unwrap();
        assert!(c.is_replicated());
        assert_eq!(c.node_id(), 2);
        assert_eq!(c.replication_factor(0).unwrap(), 3);
        assert!(c.replication_factor(4).is_err());
        // Not started: no placement known, no leader.
        assert_eq!(c.placement("t", 0).leader, 0);
    }
}
