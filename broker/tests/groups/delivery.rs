//! 100,000 records through three members: at least once despite a crash, exactly once when
//! each commits before closing.

use super::*;

// ---------------------------------------------------------------------------------------
// Many records, many members
// ---------------------------------------------------------------------------------------

const MANY: u64 = 100_000;
const MANY_PARTITIONS: u32 = 12;

/// Writes record ids `0..MANY` (as decimal values) over the partitions, id `i` to
/// partition `i % MANY_PARTITIONS`, in large appends.
async fn produce_many(c: &mut Client, topic: &str) {
    create_topic(c, topic, MANY_PARTITIONS, FsyncPolicy::Never).await;
    for p in 0..MANY_PARTITIONS {
        let ids: Vec<u64> = (u64::from(p)..MANY)
            .step_by(MANY_PARTITIONS as usize)
            .collect();
        for chunk in ids.chunks(5_000) {
            append(
                c,
                topic,
                p,
                chunk.iter().map(|i| rec(i.to_string())).collect(),
            )
            .await;
        }
    }
}

fn ids(records: &[(u32, Record)]) -> Vec<u64> {
    records
        .iter()
        .map(|(_, r)| {
            String::from_utf8_lossy(&r.value)
                .parse()
                .expect("a numeric record")
        })
        .collect()
}

/// Polls until the group committed every partition up to its end.
async fn wait_all_committed(c: &mut Client, group: &str, topic: &str) {
    let deadline = Instant::now() + 3 * PATIENCE;
    loop {
        let offsets = get_offsets(c, group, topic).await;
        if offsets.iter().all(|p| p.committed == Some(p.end_offset)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not commit everything: {offsets:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A member that commits each batch as soon as it has it, until `stop`; or, with `crash_at`,
/// until it has that many records: then it drops its stream without committing its last
/// batch. Returns the ids it consumed.
async fn run_member(
    mut c: Client,
    mut stop: watch::Receiver<bool>,
    crash_at: Option<usize>,
) -> Vec<u64> {
    let mut m = Member::open(&mut c, join_with_timeout("g", "many", 500))
        .await
        .unwrap();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            kind = m.pump_unbounded() => {
                if let Resp::Batch(b) = kind {
                    if crash_at.is_some_and(|n| m.records.len() >= n) {
                        break;
                    }
                    let end = b.records.last().expect("not empty").offset + 1;
                    m.commit(b.partition, end).await;
                }
            }
        }
    }
    ids(&m.records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_consume_100k_records_over_12_partitions_at_least_once_despite_a_crash() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    produce_many(&mut c, "many").await;

    let (stop_tx, stop) = watch::channel(false);
    let members: Vec<_> = [None, None, Some(5_000)]
        .into_iter()
        .map(|crash_at| tokio::spawn(run_member(c.clone(), stop.clone(), crash_at)))
        .collect();
    wait_all_committed(&mut c, "g", "many").await;
    stop_tx.send(true).expect("members listen");

    let mut seen = vec![0u32; MANY as usize];
    let mut total = 0;
    for m in members {
        for id in m.await.expect("a member failed") {
            seen[id as usize] += 1;
            total += 1;
        }
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == 0).collect();
    assert!(
        missing.is_empty(),
        "{} records never consumed, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "consumed {total} records for {MANY}: {} duplicates",
        total - MANY as usize
    );
}

/// One member of the sequential run: joins, processes whole batches until it has
/// `quota` records, commits exactly what it processed, waits for the acks, closes.
async fn consume_then_commit_and_close(c: &mut Client, quota: usize) -> Vec<u64> {
    // Room for everything uncommitted: this member commits only at the end.
    let joining = JoinGroup {
        max_in_flight_records: MANY as u32,
        ..join_with_timeout("g", "many", 500)
    };
    let mut m = Member::open(c, joining).await.unwrap();
    m.wait_until(&format!("{quota} records"), |m| m.records.len() >= quota)
        .await;
    let processed = m.records.len();
    let done = m.next.clone();
    for (p, end) in done {
        m.commit_ok(p, end).await;
    }
    ids(&m.records[..processed])
}

#[tokio::test]
async fn three_members_consume_100k_records_exactly_once_when_each_commits_before_closing() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    produce_many(&mut c, "many").await;

    // One after another: each takes over the partitions of the ones that closed before
    // (during their session timeout, it shares the group with them).
    let third = MANY as usize / 3;
    let mut consumed = consume_then_commit_and_close(&mut c, third).await;
    consumed.extend(consume_then_commit_and_close(&mut c, third).await);
    let rest = MANY as usize - consumed.len();
    consumed.extend(consume_then_commit_and_close(&mut c, rest).await);

    let mut seen = vec![0u32; MANY as usize];
    for &id in &consumed {
        seen[id as usize] += 1;
    }
    let dups: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] > 1).collect();
    assert!(
        dups.is_empty(),
        "{} records consumed twice, first {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    assert_eq!(consumed.len(), MANY as usize);
    wait_all_committed(&mut c, "g", "many").await;
}
