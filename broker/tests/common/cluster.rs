//! Loopback clusters of real `spoold` processes: fixed ports chosen free, the same
//! `--peers` on every node, restarts on the same ports and data directories.

use std::net::TcpListener;

use spool_proto::v1::*;

use super::{Broker, Client, PATIENCE};

/// `n` nodes, `nodes[i]` being node `i + 1`.
pub struct Cluster {
    pub nodes: Vec<Broker>,
    pub peers: String,
}

/// A port free right now on loopback (the OS hands it out and we release it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Cluster {
    /// Starts `n` nodes and waits until they have a metadata leader.
    pub async fn start(n: u32) -> Cluster {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = (i + 1).to_string();
                let listen = format!("127.0.0.1:{p}");
                Broker::start_with(&[
                    "--listen",
                    &listen,
                    "--node-id",
                    &id,
                    "--peers",
                    &peers,
                    "--election-timeout-ms",
                    "300",
                ])
            })
            .collect();
        let cluster = Cluster { nodes, peers };
        cluster.metadata_leader(&[]).await;
        cluster
    }

    /// A client of node `id`.
    pub async fn client(&self, id: u32) -> Client {
        self.nodes[id as usize - 1].client().await
    }

    pub fn node(&mut self, id: u32) -> &mut Broker {
        &mut self.nodes[id as usize - 1]
    }

    /// Waits until every running node but `except` names the same metadata leader (not
    /// one of `except`), and returns it.
    pub async fn metadata_leader(&self, except: &[u32]) -> u32 {
        let up: Vec<u32> = (1..=self.nodes.len() as u32)
            .filter(|id| !except.contains(id))
            .collect();
        eventually("a metadata leader all running nodes agree on", || async {
            let mut leaders = Vec::new();
            for &id in &up {
                let mut c = self.client(id).await;
                let r = c.describe_cluster(DescribeClusterRequest {}).await.ok()?;
                leaders.push(r.into_inner().metadata_leader);
            }
            let first = leaders[0];
            (first != 0 && !except.contains(&first) && leaders.iter().all(|&l| l == first))
                .then_some(first)
        })
        .await
    }
}

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`]. For state
/// that other processes reach in their own time (an election, a replicated apply).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not reached within {PATIENCE:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
