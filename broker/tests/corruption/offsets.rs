//! A damaged committed-offsets log.

use super::*;

// ---------------------------------------------------------------------------------------
// (d) The committed-offsets log
// ---------------------------------------------------------------------------------------

const GROUPS: u32 = 4;
const OFFSET_PARTITIONS: u32 = 3;
const ROUNDS: u64 = 12;

/// Fills a topic and commits `ROUNDS` rounds for every (group, partition); one commit is
/// one batch of the offsets log. Returns the stopped broker and, per key, its commits in
/// order as (offsets-log offset, committed value).
async fn committed_broker() -> (Broker, BTreeMap<(u32, u32), Vec<(u64, u64)>>) {
    let mut broker = filled_broker(OFFSET_PARTITIONS, 20).await;
    broker.restart();
    let mut c = broker.client().await;
    let mut history: BTreeMap<(u32, u32), Vec<(u64, u64)>> = BTreeMap::new();
    let mut seq = 0;
    for round in 1..=ROUNDS {
        for g in 0..GROUPS {
            for p in 0..OFFSET_PARTITIONS {
                let value = round * 10 + u64::from(g);
                commit(&mut c, &format!("g{g}"), TOPIC, p, value).await;
                history.entry((g, p)).or_default().push((seq, value));
                seq += 1;
            }
        }
    }
    broker.stop().await;
    (broker, history)
}

fn offsets_log(data: &Path) -> PathBuf {
    let logs = segment_files(&data.join("internal/offsets"), "log");
    assert_eq!(logs.len(), 1, "{logs:?}");
    logs[0].1.clone()
}

/// Checks committed offsets after damage to the offsets-log records `lost`: a key whose
/// newest commit is intact has it; otherwise its newest intact older commit; never nothing
/// when some commit of the key is intact.
async fn assert_commits_after_damage(
    broker: &Broker,
    history: &BTreeMap<(u32, u32), Vec<(u64, u64)>>,
    lost: &BTreeSet<u64>,
) {
    let mut c = broker.client().await;
    for g in 0..GROUPS {
        let got: BTreeMap<u32, u64> = get_offsets(&mut c, &format!("g{g}"), TOPIC)
            .await
            .into_iter()
            .filter_map(|p| Some((p.partition, p.committed?)))
            .collect();
        for p in 0..OFFSET_PARTITIONS {
            let want = history[&(g, p)]
                .iter()
                .rev()
                .find(|(seq, _)| !lost.contains(seq))
                .map(|(_, v)| *v);
            assert_eq!(
                got.get(&p).copied(),
                want,
                "group g{g} partition {p}: newest intact commit (history {:?})",
                history[&(g, p)]
            );
        }
    }
}

#[tokio::test]
async fn a_truncated_offsets_log_keeps_every_commit_before_the_cut() {
    let seed = seed("truncated_offsets_log");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut broker, history) = committed_broker().await;
    let data = broker.data_dir().to_path_buf();
    assert_verify_clean(&data);
    let path = offsets_log(&data);
    let bytes = fs::read(&path).unwrap();
    let layout = batches(&bytes);
    assert_eq!(
        layout.len() as u64,
        ROUNDS * u64::from(GROUPS * OFFSET_PARTITIONS)
    );
    // Cut inside a batch (a cut on a batch boundary is indistinguishable from a shorter log).
    let victim = layout[rng.random_range(layout.len() / 4..layout.len())].clone();
    let cut = rng.random_range(victim.bytes.start + 1..victim.bytes.end);
    truncate(&path, cut);
    let lost: BTreeSet<u64> = layout
        .iter()
        .filter(|b| b.bytes.end > cut)
        .flat_map(|b| b.offsets.clone())
        .collect();
    let out = verify(&data);
    assert_eq!(out.status.code(), Some(1), "verify reports the torn tail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("internal/offsets")
            && stdout.contains(&format!("after offset {}", victim.offsets.start)),
        "verify names the log and where the damage starts:\n{stdout}"
    );
    broker.restart();
    assert_commits_after_damage(&broker, &history, &lost).await;
}

/// Position of the offsets log's last index entry: recovery scans (and checks) only the
/// batches from there on.
fn last_index_position(data: &Path) -> usize {
    let idx = fs::read(offsets_log(data).with_extension("index")).unwrap();
    assert!(idx.len() >= 8, "the offsets log has index entries");
    u32::from_le_bytes(idx[idx.len() - 4..].try_into().unwrap()) as usize
}

/// Flips bytes in one commit batch chosen by `pick` among the offsets log's batches and
/// checks that only that batch's commits are lost.
async fn flip_one_commit_batch(test: &str, pick: fn(&[BatchAt], usize, &mut StdRng) -> usize) {
    let seed = seed(test);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut broker, history) = committed_broker().await;
    let data = broker.data_dir().to_path_buf();
    let path = offsets_log(&data);
    let bytes = fs::read(&path).unwrap();
    let layout = batches(&bytes);
    let victim = layout[pick(&layout, last_index_position(&data), &mut rng)].clone();
    let at = flip_bytes(&mut rng, &path, victim.bytes.clone(), 2);
    let lost: BTreeSet<u64> = at
        .iter()
        .flat_map(|p| {
            layout
                .iter()
                .find(|b| b.bytes.contains(p))
                .unwrap()
                .offsets
                .clone()
        })
        .collect();
    let (listing, ranges) = verify_damage(&data);
    let end = layout.last().unwrap().bytes.end as u64;
    assert!(
        fs::metadata(&path).unwrap().len() >= end,
        "verify does not cut intact commits off the log:\n{listing}"
    );
    assert_eq!(set_of(&ranges), lost, "verify lists the damaged commits");
    broker.restart();
    assert!(
        broker.log().contains("committed offsets log is damaged"),
        "the damage is logged:\n{}",
        broker.log()
    );
    assert_commits_after_damage(&broker, &history, &lost).await;
}

#[tokio::test]
async fn flipped_bytes_in_the_offsets_log_lose_only_the_damaged_commits() {
    flip_one_commit_batch("flipped_offsets_log", |layout, indexed, rng| {
        // A batch before the last index entry.
        let n = layout.iter().filter(|b| b.bytes.end <= indexed).count();
        rng.random_range(0..n)
    })
    .await;
}

#[tokio::test]
async fn flipped_bytes_in_the_offsets_log_tail_lose_only_the_damaged_commits() {
    flip_one_commit_batch("flipped_offsets_log_tail", |layout, indexed, rng| {
        // A batch after the last index entry, not the last one: later commits are intact.
        let first = layout
            .iter()
            .position(|b| b.bytes.start >= indexed)
            .unwrap();
        assert!(first + 1 < layout.len());
        rng.random_range(first..layout.len() - 1)
    })
    .await;
}
