//! A group on a topic that `AlterTopic` grows: its members rebalance onto the new
//! partitions and read them from their first offset.

use super::*;

#[tokio::test]
async fn a_group_rebalances_onto_partitions_added_while_it_reads() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "grow", 2, FsyncPolicy::Never).await;
    fill(&mut c, "grow", 2, 0..5).await;
    let mut m = Member::open(&mut c, join("g", "grow")).await.unwrap();
    m.wait_caught_up(5).await;
    let generation = m.generation;
    alter(&mut c, "grow", 4, TopicConfig::default()).await;
    // Five more records in each: offsets 5..10 of partitions 0 and 1, 0..5 of 2 and 3.
    fill(&mut c, "grow", 4, 5..10).await;
    m.wait_generation_above(generation).await;
    assert_eq!(m.partitions, (0..4).collect());
    m.wait_until("the new partitions delivered from their start", |m| {
        m.next.get(&2) == Some(&5) && m.next.get(&3) == Some(&5)
    })
    .await;
    assert_eq!(m.offsets(2), span(0..5));
    assert_eq!(m.offsets(3), span(0..5));
    // The first partitions go on where they were (their second five records).
    m.wait_until("the old partitions delivered on", |m| {
        m.next.get(&0) == Some(&10) && m.next.get(&1) == Some(&10)
    })
    .await;
}
