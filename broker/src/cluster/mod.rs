//! The cluster as this node sees it: which nodes there are, and who leads and holds each
//! partition. See ARCHITECTURE.md, *Cluster*.
//!
//! Today a broker is one node (id 1), the leader and only replica of every partition and
//! the metadata leader; this module is the one place the service asks about placement,
//! so replication (issue 14) changes the answers here, not the callers.

use spool_proto::v1;

use crate::error::{Error, Result};
use crate::registry::Registry;

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

/// The nodes and this node's place among them.
#[derive(Debug)]
pub struct Cluster {
    this: Node,
    nodes: Vec<Node>,
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

    /// Where a partition lives. Alone, this node leads and holds everything.
    pub fn placement(&self) -> Placement {
        Placement {
            leader: self.this.id,
            replicas: vec![self.this.id],
            in_sync: vec![self.this.id],
        }
    }

    /// How many copies each partition has.
    pub fn copies(&self) -> u32 {
        self.placement().replicas.len() as u32
    }

    /// `DescribeCluster`: every node with the partitions it leads and follows.
    pub fn describe(&self, registry: &Registry) -> v1::DescribeClusterResponse {
        let partitions: u32 = registry
            .list()
            .iter()
            .map(|t| t.partitions.len() as u32)
            .sum();
        // Every partition has the same placement while there is one node.
        let place = self.placement();
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let leads = place.leader == n.id;
                let holds = place.replicas.contains(&n.id);
                v1::NodeInfo {
                    node_id: n.id,
                    address: n.address.clone(),
                    state: v1::NodeState::Up as i32,
                    leading: if leads { partitions } else { 0 },
                    following: if holds && !leads { partitions } else { 0 },
                }
            })
            .collect();
        v1::DescribeClusterResponse {
            nodes,
            metadata_leader: self.this.id,
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
        let p = c.placement();
        assert_eq!((p.leader, p.replicas, p.in_sync), (1, vec![1], vec![1]));
    }
}
