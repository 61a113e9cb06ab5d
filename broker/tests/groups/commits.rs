//! Commits: revoked and stale ones refused, every one answered, acks with and without
//! auto-commit, and flow control by in-flight records.

use super::*;

// ---------------------------------------------------------------------------------------
// Commits
// ---------------------------------------------------------------------------------------

/// Two partitions of ten records each; member `a` read all of them and committed 3 in
/// each, then `b` joined and took one of them. Returns (broker, client, a, b, the partition
/// `b` took).
async fn half_moved_to_a_second_member() -> (Broker, Client, Member, Member, u32) {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    fill(&mut c, "t", 2, 0..10).await;

    let mut a = Member::open(&mut c, join("g", "t")).await.unwrap();
    a.wait_caught_up(10).await;
    a.commit_ok(0, 3).await;
    a.commit_ok(1, 3).await;

    let b = Member::open(&mut c, join("g", "t")).await.unwrap();
    a.wait_until("the revocation", |m| m.partitions.len() == 1)
        .await;
    let kept = *a.partitions.first().expect("one partition");
    let moved = 1 - kept;
    assert_eq!(b.partitions, BTreeSet::from([moved]));
    (broker, c, a, b, moved)
}

#[tokio::test]
async fn a_commit_for_a_partition_revoked_by_a_rebalance_is_rejected_and_moves_no_offset() {
    let (_broker, mut c, mut a, mut b, revoked) = half_moved_to_a_second_member().await;
    let kept = 1 - revoked;

    let ack = a.commit_and_wait(revoked, 7).await;
    assert!(ack.rejected, "a stale commit was accepted: {ack:?}");
    assert!(!ack.reason.is_empty(), "a rejection without a reason");
    a.commit_ok(kept, 5).await;
    let mut want = [None, None];
    want[revoked as usize] = Some(3);
    want[kept as usize] = Some(5);
    assert_eq!(committed(&mut c, "g", "t").await, want);

    // The new owner starts the revoked partition at the last accepted commit.
    b.wait_caught_up(10).await;
    assert_eq!(b.offsets(revoked), span(3..10));

    // A partition the member never owned, or that does not exist, is refused too.
    let ack = b.commit_and_wait(kept, 9).await;
    assert!(ack.rejected, "{ack:?}");
    let ack = b.commit_and_wait(99, 1).await;
    assert!(ack.rejected, "{ack:?}");
    assert_eq!(committed(&mut c, "g", "t").await, want);
}

#[tokio::test]
async fn a_commit_from_an_earlier_assignment_cannot_move_the_offset_back() {
    // a read everything, but had committed little when half of it moved to b.
    let (_broker, mut c, mut a, mut b, moved) = half_moved_to_a_second_member().await;
    // b processes the moved partition and commits further than a ever did.
    b.wait_caught_up(10).await;
    b.commit_ok(moved, 8).await;
    // b leaves; the partition comes back to a, which still holds records delivered under
    // its first assignment.
    b.send(Req::Leave(LeaveGroup {})).await;
    a.wait_until("the partition's return", |m| m.partitions.len() == 2)
        .await;
    let ack = a.commit_and_wait(moved, 5).await;
    assert!(
        ack.rejected,
        "a commit from before the partition moved away and back was accepted: {ack:?}"
    );
    assert!(
        ack.reason.contains("earlier assignment"),
        "the reason should say why: {:?}",
        ack.reason
    );
    let mut want = [None, None];
    want[moved as usize] = Some(8);
    want[1 - moved as usize] = Some(3);
    assert_eq!(committed(&mut c, "g", "t").await, want);
    // Offsets at or past where the assignment started are fine.
    a.commit_ok(moved, 9).await;
}

#[tokio::test]
async fn every_commit_is_answered_even_when_a_later_one_overtakes_it_in_the_queue() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    fill(&mut c, "t", 1, 0..100).await;
    let mut m = Member::open(&mut c, join("g", "t")).await.unwrap();
    m.wait_caught_up(100).await;
    // Sent back to back without waiting: while the first is being written, the rest queue
    // and are written as one (the latest offset); each request still gets its answer.
    let offsets = [10, 20, 30, 40, 50];
    let seen = m.acks.len();
    for o in offsets {
        m.commit(0, o).await;
    }
    m.wait_until("an answer to every commit", |m| {
        m.acks.len() - seen >= offsets.len()
    })
    .await;
    let mut answered: Vec<u64> = m.acks[seen..].iter().map(|a| a.offset).collect();
    assert!(
        m.acks[seen..].iter().all(|a| !a.rejected),
        "{:?}",
        &m.acks[seen..]
    );
    answered.sort_unstable();
    assert_eq!(answered, offsets);
    assert_eq!(committed(&mut c, "g", "t").await, [Some(50)]);
}

#[tokio::test]
async fn an_ack_with_auto_commit_commits_the_acknowledged_batches() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    fill(&mut c, "t", 2, 0..10).await;

    let auto = JoinGroup {
        auto_commit: true,
        ..join("g", "t")
    };
    let mut m = Member::open(&mut c, auto).await.unwrap();
    m.wait_caught_up(10).await;
    assert!(m.batches.len() >= 2);

    // The first batch only.
    let (p, end) = m.batches[0];
    m.send(Req::Ack(Ack { batch_count: 1 })).await;
    m.wait_until("the auto-commit of batch 1", |m| {
        m.acks.iter().any(|a| a.partition == p && a.offset == end)
    })
    .await;
    assert!(m.acks.iter().all(|a| !a.rejected), "{:?}", m.acks);
    let mut want = [None, None];
    want[p as usize] = Some(end);
    assert_eq!(committed(&mut c, "g", "t").await, want);

    // All of them; a repeated Ack is harmless.
    let n = m.batches.len() as u64;
    m.send(Req::Ack(Ack { batch_count: n })).await;
    m.send(Req::Ack(Ack { batch_count: n })).await;
    m.wait_until("the auto-commit of every batch", |m| {
        (0..2).all(|p| m.acks.iter().any(|a| a.partition == p && a.offset == 10))
    })
    .await;
    assert_eq!(committed(&mut c, "g", "t").await, [Some(10), Some(10)]);
}

#[tokio::test]
async fn an_ack_without_auto_commit_commits_nothing() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    fill(&mut c, "t", 1, 0..10).await;

    let mut m = Member::open(&mut c, join("g", "t")).await.unwrap();
    m.wait_caught_up(10).await;
    m.send(Req::Ack(Ack { batch_count: 100 })).await;
    // Requests are handled in order: once this commit is acknowledged, the Ack was handled.
    m.commit_ok(0, 2).await;
    assert_eq!(committed(&mut c, "g", "t").await, [Some(2)]);
    assert_eq!(m.acks.len(), 1, "{:?}", m.acks);
}

// ---------------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn delivery_pauses_at_max_in_flight_records_and_resumes_after_commits() {
    const LIMIT: u64 = 100;
    const PER_PARTITION: u32 = 1_000;
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 3, FsyncPolicy::Always).await;
    fill(&mut c, "t", 3, 0..PER_PARTITION).await;
    let total = 3 * PER_PARTITION as usize;

    let limited = JoinGroup {
        max_in_flight_records: LIMIT as u32,
        ..join("g", "t")
    };
    let mut m = Member::open(&mut c, limited).await.unwrap();
    // Per partition, the offset the broker confirmed committed, and the last one asked for.
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    let mut asked: BTreeMap<u32, u64> = BTreeMap::new();
    // First without commits until a quiet second, then committing whatever arrived.
    let mut committing = false;
    let quiet = Duration::from_secs(1);
    while m.records.len() < total {
        // Records delivered and not yet committed before the next message. The broker
        // sends a CommitAck before any batch the commit made room for, so this is never
        // less than what the broker counted when it read the next batch.
        let uncommitted: u64 = m
            .next
            .iter()
            .map(|(p, end)| end - acked.get(p).copied().unwrap_or(0))
            .sum();
        match m.pump_within(quiet).await {
            Some(Resp::Batch(b)) => assert!(
                uncommitted < LIMIT,
                "a batch of {} records came with {uncommitted} uncommitted; the limit is {LIMIT}",
                b.records.len()
            ),
            Some(Resp::CommitAck(a)) => {
                assert!(!a.rejected, "{a:?}");
                acked.insert(a.partition, a.offset);
            }
            Some(Resp::Assignment(a)) => panic!("an unexpected rebalance: {a:?}"),
            None if !committing => {
                // Delivery paused well before the end (a slow broker would also be quiet;
                // the check above is what guards the limit).
                assert!(
                    m.records.len() < total / 2,
                    "{} of {total} records delivered without a commit",
                    m.records.len()
                );
                committing = true;
            }
            None => {}
        }
        if committing {
            for (&p, &end) in &m.next {
                if asked.get(&p) != Some(&end) {
                    m.commit(p, end).await;
                    asked.insert(p, end);
                }
            }
        }
    }
    assert!(committing, "everything came without a commit");
    for p in 0..3 {
        assert_eq!(m.offsets(p), span(0..u64::from(PER_PARTITION)));
    }
}
