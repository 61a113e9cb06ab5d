//! `[cluster]`: which node this is and who its peers are (`--node-id`, `--peers`).

use serde::Deserialize;

/// One peer: a node id and that node's gRPC address, as `--peers` spells it (`2=host:7460`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u32,
    pub address: String,
}

/// The cluster settings. Without peers the broker runs alone, exactly as a single node.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id among `peers`; 0 = not set.
    pub node_id: u32,
    /// Every node of the cluster, this one included: `1=host:port,2=host:port,...`, the
    /// same on every node.
    pub peers: String,
    /// Raft heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_ms, 2 * election_timeout_ms)` starts an election.
    pub election_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 0,
            peers: String::new(),
            heartbeat_ms: 100,
            election_timeout_ms: 500,
        }
    }
}

impl ClusterConfig {
    /// Whether this broker is one node of several.
    pub fn enabled(&self) -> bool {
        !self.peers.trim().is_empty()
    }

    /// The peers, checked: ids unique and non-zero, addresses `host:port`, this node
    /// among them. Empty when the broker runs alone.
    pub fn parse_peers(&self) -> Result<Vec<Peer>, String> {
        if !self.enabled() {
            if self.node_id != 0 {
                return Err(format!(
                    "--node-id {} needs --peers (every node's id=host:port, this one included)",
                    self.node_id
                ));
            }
            return Ok(Vec::new());
        }
        let mut peers: Vec<Peer> = Vec::new();
        for item in self
            .peers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (id, address) = item.split_once('=').ok_or_else(|| {
                format!("--peers entry {item:?} is not id=host:port (e.g. 2=10.0.0.2:7450)")
            })?;
            let id: u32 = id
                .trim()
                .parse()
                .ok()
                .filter(|&id| id != 0)
                .ok_or_else(|| format!("--peers entry {item:?}: the node id must be 1 or more"))?;
            let address = address.trim();
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!(
                    "--peers entry {item:?}: the address must be host:port"
                ));
            }
            if peers.iter().any(|p| p.id == id) {
                return Err(format!("--peers names node {id} twice"));
            }
            peers.push(Peer {
                id,
                address: address.to_string(),
            });
        }
        if self.node_id == 0 {
            return Err("--peers needs --node-id (this node's id among the peers)".into());
        }
        if !peers.iter().any(|p| p.id == self.node_id) {
            return Err(format!(
                "--node-id {} is not among --peers ({}): list every node, this one included",
                self.node_id,
                peers
                    .iter()
                    .map(|p| p.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms < 3 * self.heartbeat_ms {
            return Err(format!(
                "cluster.election_timeout_ms ({}) must be at least 3 heartbeats (heartbeat_ms {}, at least 1)",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        peers.sort_by_key(|p| p.id);
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node_id: u32, peers: &str) -> ClusterConfig {
        ClusterConfig {
            node_id,
            peers: peers.into(),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn peers_parse_sorted_and_include_this_node() {
        let p = config(2, "3=h3:7470, 1=127.0.0.1:7450,2=h2:7460")
            .parse_peers()
            .unwrap();
        let ids: Vec<u32> = p.iter().map(|p| p.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(p[1].address, "h2:7460");
        assert!(config(0, "").parse_peers().unwrap().is_empty());
    }

    #[test]
    fn bad_peers_say_what_to_fix() {
        for (node, peers, says) in [
            (1, "1=a:1,1=b:2", "names node 1 twice"),
            (1, "1=a", "host:port"),
            (1, "x=a:1", "node id must be"),
            (1, "0=a:1", "node id must be"),
            (4, "1=a:1,2=b:2", "not among --peers (1, 2)"),
            (0, "1=a:1", "needs --node-id"),
            (2, "", "needs --peers"),
            (1, "1:a:1", "not id=host:port"),
        ] {
            let e = config(node, peers).parse_peers().unwrap_err();
            assert!(e.contains(says), "{peers}: {e}");
        }
    }
}
