//! `cluster.json` in the data directory: which node of which peers the directory belongs
//! to, written on the first start with `--peers`. A node restarted with other flags, a
//! cluster's directory started alone, or a single node's topics started as a cluster
//! refuse to start, saying why, instead of joining the wrong cluster or forking it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::Peer;
use crate::error::{Error, Result};

const FILE: &str = "cluster.json";

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    node_id: u32,
    /// `id=address`, by id.
    peers: Vec<String>,
}

impl Identity {
    fn new(node_id: u32, peers: &[Peer]) -> Identity {
        Identity {
            node_id,
            peers: peers
                .iter()
                .map(|p| format!("{}={}", p.id, p.address))
                .collect(),
        }
    }

    fn flags(&self) -> String {
        format!(
            "--node-id {} --peers {}",
            self.node_id,
            self.peers.join(",")
        )
    }
}

/// Checks (and on a fresh directory records) that `data_dir` belongs to node `node_id` of
/// `peers` (empty = a single node). `has_topics`: the directory already holds topics.
pub fn check(data_dir: &Path, node_id: u32, peers: &[Peer], has_topics: bool) -> Result<()> {
    let path = data_dir.join(FILE);
    let stored: Option<Identity> = match std::fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
            Error::FailedPrecondition(format!(
                "{} is damaged ({e}); restore it, or start this node with an empty --data-dir to rejoin as a fresh replica",
                path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let dir = data_dir.display();
    match (stored, peers.is_empty()) {
        (None, true) => Ok(()),
        (Some(id), true) => Err(Error::FailedPrecondition(format!(
            "{dir} belongs to node {} of a cluster: start it with {}",
            id.node_id,
            id.flags()
        ))),
        (None, false) if has_topics => Err(Error::FailedPrecondition(format!(
            "{dir} holds the topics of a single node: a cluster starts from empty data directories; start without --peers, or with an empty --data-dir"
        ))),
        (None, false) => {
            let me = Identity::new(node_id, peers);
            let bytes = serde_json::to_vec_pretty(&me).expect("serialisable");
            crate::registry::write_atomically(&path, &bytes)
        }
        (Some(id), false) => {
            let me = Identity::new(node_id, peers);
            if id == me {
                return Ok(());
            }
            Err(Error::FailedPrecondition(format!(
                "{dir} belongs to the cluster started with {}, not {}: start with the flags it was made with, or with an empty --data-dir to join as a fresh node",
                id.flags(),
                me.flags()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(spec: &str) -> Vec<Peer> {
        spec.split(',')
            .map(|p| {
                let (id, a) = p.split_once('=').unwrap();
                Peer {
                    id: id.parse().unwrap(),
                    address: a.into(),
                }
            })
            .collect()
    }

    #[test]
    fn a_directory_keeps_the_cluster_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let three = peers("1=a:1,2=b:2,3=c:3");
        check(dir.path(), 2, &three, false).unwrap();
        check(dir.path(), 2, &three, true).unwrap();
        let e = check(dir.path(), 3, &three, true).unwrap_err().to_string();
        assert!(e.contains("--node-id 2 --peers 1=a:1,2=b:2,3=c:3"), "{e}");
        let e = check(dir.path(), 2, &peers("1=a:1,2=b:2"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not --node-id 2 --peers 1=a:1,2=b:2"), "{e}");
        let e = check(dir.path(), 1, &[], true).unwrap_err().to_string();
        assert!(e.contains("belongs to node 2 of a cluster"), "{e}");
    }

    #[test]
    fn a_single_nodes_topics_do_not_become_a_cluster() {
        let dir = tempfile::tempdir().unwrap();
        check(dir.path(), 1, &[], true).unwrap();
        let e = check(dir.path(), 1, &peers("1=a:1,2=b:2"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("topics of a single node"), "{e}");
        assert!(!dir.path().join(FILE).exists());
    }
}
