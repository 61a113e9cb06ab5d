//! A single `spoold` describes itself as a cluster of one: node 1 at its own address, up,
//! the metadata leader, and the leader and only replica of every partition; a topic asking
//! for more copies than there are nodes is refused before anything is created.

mod common;

use common::*;
use spool_proto::v1::*;
use tonic::Code;

async fn cluster(c: &mut Client) -> DescribeClusterResponse {
    c.describe_cluster(DescribeClusterRequest {})
        .await
        .expect("DescribeCluster")
        .into_inner()
}

#[tokio::test]
async fn a_single_node_is_the_leader_and_only_replica_of_everything() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    let alone = cluster(&mut c).await;
    assert_eq!(alone.metadata_leader, 1);
    assert_eq!(alone.nodes.len(), 1, "{alone:?}");
    let me = &alone.nodes[0];
    assert_eq!(
        (me.node_id, me.address.as_str(), me.state),
        (1, b.addr.to_string().as_str(), NodeState::Up as i32)
    );
    assert_eq!((me.leading, me.following), (0, 0), "no topics yet");

    let t = create_topic(&mut c, "orders", 3, FsyncPolicy::Never).await;
    assert_eq!(t.replication_factor, 1, "0 asks for min(3, nodes)");
    for p in &t.partition_info {
        assert_eq!((p.leader, &p.replicas, &p.in_sync), (1, &vec![1], &vec![1]));
    }
    let asked = |name: &str, rf| CreateTopicRequest {
        name: name.into(),
        partitions: 2,
        replication_factor: rf,
        ..Default::default()
    };
    let one = c.create_topic(asked("one", 1)).await.unwrap().into_inner();
    assert_eq!(one.topic.expect("topic").replication_factor, 1);
    let s = status(c.create_topic(asked("three", 3)).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("more than the 1 node"),
        "{}",
        s.message()
    );
    assert_eq!(
        code(
            c.describe_topic(DescribeTopicRequest {
                name: "three".into()
            })
            .await
        ),
        Code::NotFound,
        "a refused topic is not created"
    );
    let me = cluster(&mut c).await.nodes[0].clone();
    assert_eq!((me.leading, me.following), (5, 0), "3 + 2 partitions");

    b.stop().await;
    b.restart();
    let mut c = b.client().await;
    let info = describe(&mut c, "orders").await;
    assert_eq!(info.replication_factor, 1);
    assert!(info.partition_info.iter().all(|p| p.leader == 1));
    let again = cluster(&mut c).await;
    assert_eq!(
        again.nodes[0].address,
        b.addr.to_string(),
        "the new process's address"
    );
    assert_eq!(again.nodes[0].leading, 5);
}
