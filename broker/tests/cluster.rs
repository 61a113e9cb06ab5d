//! Three `spoold` processes with the same `--peers`: topics replicated through the
//! metadata Raft group, a killed metadata leader replaced, a restarted node caught up,
//! and a data directory refusing other flags.

mod common;

use common::cluster::{Cluster, eventually};
use common::*;
use spool_proto::v1::*;
use tonic::Code;

async fn create(c: &mut Client, name: &str, partitions: u32) -> Result<TopicInfo, tonic::Status> {
    c.create_topic(CreateTopicRequest {
        name: name.into(),
        partitions,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().topic.expect("topic"))
}

async fn has_topic(c: &mut Client, name: &str) -> bool {
    c.describe_topic(DescribeTopicRequest { name: name.into() })
        .await
        .is_ok()
}

#[tokio::test]
async fn three_nodes_agree_on_topics_and_survive_the_metadata_leaders_kill() {
    let mut cluster = Cluster::start(3).await;
    // Created on one node, seen on every node with three replicas each.
    let mut c2 = cluster.client(2).await;
    let t = create(&mut c2, "orders", 3).await.unwrap();
    assert_eq!(t.replication_factor, 3);
    for id in 1..=3 {
        let c = cluster.client(id).await;
        let t = eventually("the topic on every node", || {
            let mut c = c.clone();
            async move {
                let r = c
                    .describe_topic(DescribeTopicRequest {
                        name: "orders".into(),
                    })
                    .await;
                r.ok()
                    .and_then(|r| r.into_inner().topic)
                    .filter(|t| t.partitions == 3)
            }
        })
        .await;
        assert!(
            t.partition_info.iter().all(|p| p.replicas.len() == 3),
            "{t:?}"
        );
    }
    let mut c1 = cluster.client(1).await;
    assert_eq!(
        code(create(&mut c1, "orders", 1).await),
        Code::AlreadyExists
    );
    // Partition data is refused in a cluster, saying why.
    let s = status(
        c1.read(ReadRequest {
            topic: "orders".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("not replicated"), "{}", s.message());

    let leader = cluster.metadata_leader(&[]).await;
    cluster.node(leader).kill().await;
    let next = cluster.metadata_leader(&[leader]).await;
    assert_ne!(next, leader);
    let survivor = (1..=3).find(|&id| id != leader).unwrap();
    let mut c = cluster.client(survivor).await;
    create(&mut c, "after", 2).await.unwrap();
    c.delete_topic(DeleteTopicRequest {
        name: "orders".into(),
    })
    .await
    .unwrap();

    // The killed node comes back on its ports and catches up with what it missed.
    cluster.node(leader).restart();
    let mut back = cluster.client(leader).await;
    eventually("the restarted node catching up", || {
        let mut b = back.clone();
        async move {
            (has_topic(&mut b, "after").await && !has_topic(&mut b, "orders").await).then_some(())
        }
    })
    .await;
    let status = back
        .describe_cluster(DescribeClusterRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.nodes.len(), 3);
}

#[tokio::test]
async fn a_data_directory_refuses_other_flags() {
    let mut cluster = Cluster::start(3).await;
    let node = cluster.node(3);
    node.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spoold"))
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--node-id", "3", "--peers", "1=127.0.0.1:1,3=127.0.0.1:3"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run spoold");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to the cluster started with --node-id 3"),
        "{err}"
    );
    let alone = std::process::Command::new(env!("CARGO_BIN_EXE_spoold"))
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run spoold");
    assert!(!alone.status.success());
    assert!(String::from_utf8_lossy(&alone.stderr).contains("belongs to node 3 of a cluster"));
}
