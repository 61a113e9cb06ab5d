//! `spool cluster`: the nodes of the cluster and where partitions live.

use clap::Subcommand;
use spool_client::Client;
use spool_client::v1::{DescribeClusterResponse, NodeState};

use super::output::{self, Table};

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show every node (address, state, partitions led and followed) and the metadata leader.
    #[command(after_help = "Example:\n  spool cluster status")]
    Status,
}

pub async fn run(client: &Client, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => {
            print!("{}", render(&client.describe_cluster().await?));
            Ok(())
        }
    }
}

fn render(c: &DescribeClusterResponse) -> String {
    let mut t = Table::new(&[
        ("NODE", true),
        ("ADDRESS", false),
        ("STATE", false),
        ("LEADING", true),
        ("FOLLOWING", true),
    ]);
    for n in &c.nodes {
        let state = match NodeState::try_from(n.state) {
            Ok(NodeState::Up) => "up",
            Ok(NodeState::Down) => "down",
            _ => "unknown",
        };
        t.row(vec![
            n.node_id.to_string(),
            n.address.clone(),
            state.to_string(),
            n.leading.to_string(),
            n.following.to_string(),
        ]);
    }
    format!(
        "metadata leader: {}\n\n{}",
        output::node(c.metadata_leader),
        t.render()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_client::v1::NodeInfo;

    #[test]
    fn status_shows_each_node_and_a_missing_leader_as_none() {
        let c = DescribeClusterResponse {
            nodes: vec![
                NodeInfo {
                    node_id: 1,
                    address: "10.0.0.1:7450".into(),
                    state: NodeState::Up as i32,
                    leading: 4,
                    following: 8,
                },
                NodeInfo {
                    node_id: 2,
                    address: "10.0.0.2:7450".into(),
                    state: NodeState::Down as i32,
                    leading: 0,
                    following: 0,
                },
            ],
            metadata_leader: 0,
        };
        let out = render(&c);
        assert!(out.starts_with("metadata leader: none\n"), "{out}");
        let rows: Vec<Vec<&str>> = out
            .lines()
            .skip(3)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["1", "10.0.0.1:7450", "up", "4", "8"],
                vec!["2", "10.0.0.2:7450", "down", "0", "0"],
            ]
        );
    }
}
