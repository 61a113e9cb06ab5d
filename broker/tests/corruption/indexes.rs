//! Damaged offset and time indexes.

use super::*;

// ---------------------------------------------------------------------------------------
// (b) Indexes
// ---------------------------------------------------------------------------------------

/// Damages every `.index` file of the partition at random (flips or a truncation each) and
/// truncates every `.timeindex` at random; returns the damaged files. (A flip that leaves
/// a time index well formed but wrong is the ignored bug test further down.)
fn damage_indexes(rng: &mut StdRng, dir: &Path) -> Vec<PathBuf> {
    let mut damaged = Vec::new();
    for ext in ["index", "timeindex"] {
        for (_, path) in segment_files(dir, ext) {
            let len = fs::metadata(&path).unwrap().len() as usize;
            if len == 0 {
                continue;
            }
            if ext == "index" && rng.random_bool(0.5) {
                let n = rng.random_range(1..=4);
                flip_bytes(rng, &path, 0..len, n);
            } else {
                truncate(&path, rng.random_range(0..len));
            }
            damaged.push(path);
        }
    }
    damaged
}

#[tokio::test]
async fn damaged_indexes_lose_nothing_and_lookups_stay_exact() {
    let seed = seed("damaged_indexes");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut broker = filled_broker(1, 300).await;
    let total = 3000u64;
    let data = broker.data_dir().to_path_buf();
    let dir = partition_dir(&data, 0);
    assert_verify_clean(&data);
    let damaged = damage_indexes(&mut rng, &dir);
    assert!(damaged.len() >= 6, "{damaged:?}");

    broker.restart();
    let mut c = broker.client().await;
    let all = read_to_end(&mut c, TOPIC, 0, 0).await;
    assert_eq!(all.len() as u64, total, "every record is served");
    for (o, r) in all.iter().enumerate() {
        assert_record_intact(r, o as u64);
    }
    // Point reads at random offsets, and timestamp lookups (each exact, not a batch start).
    for _ in 0..100 {
        let o = rng.random_range(0..total);
        let r = read(&mut c, TOPIC, 0, o, 1).await.unwrap();
        assert_record_intact(&r.records[0], o);
    }
    for _ in 0..40 {
        let o = rng.random_range(0..total);
        let ts = ts_for(o) - rng.random_range(0..10);
        assert_eq!(first_offset_at(&mut c, 0, ts).await.unwrap(), o, "ts {ts}");
    }
    assert_eq!(
        data_loss_metric(&broker),
        0,
        "derived data is never data loss"
    );
    broker.stop().await;
    broker.restart();
    let mut c = broker.client().await;
    assert_eq!(read_to_end(&mut c, TOPIC, 0, 0).await.len() as u64, total);
}

#[test]
fn verify_reports_damaged_index_files() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(filled_broker(1, 150));
    let data = broker.data_dir().to_path_buf();
    let dir = partition_dir(&data, 0);
    // Truncate the first closed segment's index mid-entry and flip a byte of its time index.
    let (_, index) = &segment_files(&dir, "index")[0];
    let len = fs::metadata(index).unwrap().len() as usize;
    truncate(index, len - 3);
    let (_, time) = &segment_files(&dir, "timeindex")[0];
    let mut bytes = fs::read(time).unwrap();
    bytes[3] ^= 0x40;
    fs::write(time, &bytes).unwrap();
    let out = verify(&data);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "verify reports damaged indexes");
    assert!(stdout.contains(&*index.to_string_lossy()), "{stdout}");
    assert!(stdout.contains(&*time.to_string_lossy()), "{stdout}");
}

#[tokio::test]
async fn a_flipped_bit_in_a_time_index_never_makes_a_timestamp_lookup_skip_records() {
    let mut broker = filled_broker(1, 150).await;
    let data = broker.data_dir().to_path_buf();
    let dir = partition_dir(&data, 0);
    let logs = segment_files(&dir, "log");
    let (base, log_path) = &logs[0];
    let (next_base, _) = logs[1];
    let (_, time_path) = &segment_files(&dir, "timeindex")[0];
    let mut idx = fs::read(time_path).unwrap();
    assert!(
        idx.len() >= 24 && idx.len() % 12 == 0,
        "{} bytes",
        idx.len()
    );
    let last = idx.len() - 12;
    let ts = i64::from_le_bytes(idx[last..last + 8].try_into().unwrap());
    let prev = i64::from_le_bytes(idx[last - 12..last - 4].try_into().unwrap());
    assert_eq!(
        ts,
        ts_for(next_base - 1),
        "the last entry holds the segment maximum"
    );
    // Clear one set bit: the entry stays increasing (well formed) but understates the max.
    let bit = (0..63)
        .find(|b| ts & (1 << b) != 0 && ts - (1 << b) > prev)
        .expect("a bit to clear");
    idx[last + bit / 8] ^= 1 << (bit % 8);
    fs::write(time_path, &idx).unwrap();
    eprintln!(
        "{}: last time entry {ts} -> {}",
        log_path.display(),
        ts - (1 << bit)
    );
    assert!(*base < next_base - 1);

    broker.restart();
    let mut c = broker.client().await;
    let want = next_base - 1;
    let got = first_offset_at(&mut c, 0, ts_for(want)).await.unwrap();
    assert_eq!(
        got, want,
        "the first record at or after ts_for({want}) is offset {want}"
    );
}
