//! Assignment, rebalances, session timeouts, reconnects and broker restarts.

use super::*;

// ---------------------------------------------------------------------------------------
// Assignment and rebalancing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_single_member_is_assigned_every_partition_and_reads_each_from_the_start() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 4, FsyncPolicy::Always).await;
    fill(&mut c, "t", 4, 0..10).await;

    let mut m = Member::open(&mut c, join("g", "t")).await.unwrap();
    assert!(!m.id.is_empty(), "the broker chose no member id");
    assert_eq!(m.assignments[0].partitions, [0, 1, 2, 3]);
    assert!(m.generation >= 1);
    m.wait_caught_up(10).await;
    for p in 0..4 {
        assert_eq!(m.offsets(p), span(0..10), "partition {p}");
    }
    assert_filled(&m.records);

    // Then it tails live appends.
    append(&mut c, "t", 2, recs("p2", 10..12)).await;
    m.wait_until("the live records", |m| m.records.len() == 42)
        .await;
    assert_eq!(m.offsets(2), span(0..12));
    assert_eq!(m.assignments.len(), 1, "no rebalance with one member");
}

#[tokio::test]
async fn a_second_member_joining_splits_the_partitions_evenly_under_a_new_generation() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 6, FsyncPolicy::Always).await;

    let mut a = Member::open(&mut c, join("g", "t")).await.unwrap();
    assert_eq!(a.assignments[0].partitions, [0, 1, 2, 3, 4, 5]);
    let first = a.generation;

    let b = Member::open(&mut c, join("g", "t")).await.unwrap();
    assert_ne!(a.id, b.id, "two new members got the same id");
    assert!(b.generation > first, "b joined under the old generation");
    a.wait_generation_above(first).await;
    assert_eq!(
        a.generation, b.generation,
        "a and b disagree on the generation"
    );
    assert_eq!(
        a.partitions.len(),
        3,
        "{:?} vs {:?}",
        a.partitions,
        b.partitions
    );
    assert_eq!(
        b.partitions.len(),
        3,
        "{:?} vs {:?}",
        a.partitions,
        b.partitions
    );
    assert!(a.partitions.is_disjoint(&b.partitions));
    let union: BTreeSet<u32> = a.partitions.union(&b.partitions).copied().collect();
    assert_eq!(union, (0..6).collect());
    // Sticky: a only gave partitions away.
    let before: BTreeSet<u32> = a.assignments[0].partitions.iter().copied().collect();
    assert!(a.partitions.is_subset(&before));

    // New records reach exactly one member each: the one that owns the partition (the
    // member checks every batch against its assignment).
    let mut b = b;
    fill(&mut c, "t", 6, 0..5).await;
    a.wait_caught_up(5).await;
    b.wait_caught_up(5).await;
    assert_eq!(a.records.len() + b.records.len(), 30);
    assert_filled(&a.records);
    assert_filled(&b.records);

    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.topics[0].generation, a.generation);
    assert_eq!(d.topics[0].members.len(), 2);
}

#[tokio::test]
async fn a_dropped_member_s_partitions_move_after_its_session_timeout_and_resume_at_the_committed_offset()
 {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 4, FsyncPolicy::Always).await;
    fill(&mut c, "t", 4, 0..50).await;

    let mut a = Member::open(&mut c, join_with_timeout("g", "t", 500))
        .await
        .unwrap();
    let mut b = Member::open(&mut c, join_with_timeout("g", "t", 60_000))
        .await
        .unwrap();
    a.wait_generation_above(a.assignments[0].generation).await;
    assert_eq!(a.generation, b.generation);
    a.wait_caught_up(50).await;
    b.wait_caught_up(50).await;

    // a processed everything it owns but commits one partition only partly.
    let mine: Vec<u32> = a.partitions.iter().copied().collect();
    assert_eq!(mine.len(), 2);
    let (partly, fully) = (mine[0], mine[1]);
    a.commit_ok(partly, 20).await;
    a.commit_ok(fully, 50).await;
    let generation = b.generation;
    drop(a);

    // After a's session timeout, b owns everything...
    b.wait_until("every partition", |m| m.partitions.len() == 4)
        .await;
    assert!(b.generation > generation);
    let mark = b.records.len();
    // ...and resumes a's partitions at the committed offsets: the uncommitted records of
    // `partly` again, nothing of `fully` until new records come.
    fill(&mut c, "t", 4, 50..55).await;
    b.wait_caught_up(55).await;
    assert_eq!(b.offsets_since(mark, partly), span(20..55));
    assert_eq!(b.offsets_since(mark, fully), span(50..55));
    for p in 0..4 {
        if p != partly && p != fully {
            assert_eq!(
                b.offsets_since(mark, p),
                span(50..55),
                "b's own partition {p}"
            );
        }
    }
    assert_filled(&b.records);

    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.topics[0].members.len(), 1, "{d:?}");
    assert_eq!(d.topics[0].members[0].member_id, b.id);
}

#[tokio::test]
async fn a_reconnect_with_the_same_member_id_within_the_session_timeout_causes_no_rebalance() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 4, FsyncPolicy::Always).await;
    fill(&mut c, "t", 4, 0..20).await;

    // A long timeout: the reconnect must land within it even on a slow machine.
    let mut a = Member::open(&mut c, join_with_timeout("g", "t", 120_000))
        .await
        .unwrap();
    let mut b = Member::open(&mut c, join_with_timeout("g", "t", 120_000))
        .await
        .unwrap();
    a.wait_generation_above(a.assignments[0].generation).await;
    let generation = b.generation;
    a.wait_caught_up(20).await;
    b.wait_caught_up(20).await;
    let mine: Vec<u32> = a.partitions.iter().copied().collect();
    a.commit_ok(mine[0], 10).await;
    a.commit_ok(mine[1], 20).await;
    let (id, partitions) = (a.id.clone(), a.partitions.clone());
    drop(a);
    // Make sure the broker saw the stream end, so this is a reconnect and not a takeover.
    wait_disconnected(&mut c, "g", "t", &id).await;

    let again = JoinGroup {
        member_id: id.clone(),
        ..join_with_timeout("g", "t", 120_000)
    };
    let mut a = Member::open(&mut c, again).await.unwrap();
    assert_eq!(a.id, id);
    assert_eq!(a.generation, generation, "the reconnect caused a rebalance");
    assert_eq!(a.partitions, partitions);

    // It resumes at its commits; b saw no new assignment.
    fill(&mut c, "t", 4, 20..21).await;
    a.wait_caught_up(21).await;
    b.wait_caught_up(21).await;
    assert_eq!(a.offsets(mine[0]), span(10..21));
    assert_eq!(a.offsets(mine[1]), span(20..21));
    assert_eq!(b.assignments.len(), 1, "b was told of a rebalance");
    assert_eq!(b.generation, generation);

    let d = describe_group(&mut c, "g", Some("t")).await;
    assert_eq!(d.topics[0].generation, generation);
    assert!(d.topics[0].members.iter().all(|m| m.connected), "{d:?}");
}

// ---------------------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------------------

/// A member consumes, commits part of it, the broker goes down (SIGTERM or SIGKILL) and
/// comes back; the member rejoins under its id and resumes exactly at its commits.
async fn resume_after_restart(kill: bool) {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 3, FsyncPolicy::Always).await;
    fill(&mut c, "t", 3, 0..100).await;

    let joining = JoinGroup {
        member_id: "worker-1".into(),
        ..join("g", "t")
    };
    let mut m = Member::open(&mut c, joining.clone()).await.unwrap();
    assert_eq!(m.id, "worker-1");
    m.wait_caught_up(100).await;
    m.commit_ok(0, 40).await;
    m.commit_ok(1, 100).await;
    m.commit_ok(2, 0).await;

    // Mid-consumption: the stream is still open when the broker goes.
    if kill {
        broker.kill().await;
    } else {
        broker.stop().await;
    }
    m.closed().await;
    broker.restart();
    let mut c = broker.client().await;
    assert_eq!(
        committed(&mut c, "g", "t").await,
        [Some(40), Some(100), Some(0)]
    );

    let mut m = Member::open(&mut c, joining).await.unwrap();
    assert_eq!(m.id, "worker-1");
    assert_eq!(m.assignments[0].partitions, [0, 1, 2]);
    fill(&mut c, "t", 3, 100..101).await;
    m.wait_caught_up(101).await;
    assert_eq!(m.offsets(0), span(40..101));
    assert_eq!(m.offsets(1), span(100..101));
    assert_eq!(m.offsets(2), span(0..101));
    assert_filled(&m.records);
}

#[tokio::test]
async fn a_member_resumes_from_its_commits_after_a_broker_restart() {
    resume_after_restart(false).await;
}

#[tokio::test]
async fn acknowledged_commits_survive_kill_9_and_a_member_resumes_from_them() {
    resume_after_restart(true).await;
}
