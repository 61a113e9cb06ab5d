//! Damaged closed segments: flipped bytes and cut files.

use super::*;

// ---------------------------------------------------------------------------------------
// (a) Closed segments
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn damaged_closed_segments_answer_data_loss_and_serve_everything_else() {
    let seed = seed("damaged_closed_segments");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut broker = filled_broker(1, 300).await;
    let total = 3000;
    let data = broker.data_dir().to_path_buf();
    let dir = partition_dir(&data, 0);
    assert_verify_clean(&data);

    let logs = segment_files(&dir, "log");
    assert!(logs.len() >= 4, "several segments: {logs:?}");
    let closed = &logs[..logs.len() - 1];
    // Flip bytes in one closed segment, truncate another (possibly the same one).
    let mut expected_lost = BTreeSet::new();
    let (_, flip_path) = &closed[rng.random_range(0..closed.len())];
    let original = fs::read(flip_path).unwrap();
    let layout = batches(&original);
    let n = rng.random_range(1..=3);
    for p in flip_bytes(&mut rng, flip_path, 0..original.len(), n) {
        let b = layout.iter().find(|b| b.bytes.contains(&p)).unwrap();
        expected_lost.extend(b.offsets.clone());
    }
    let (_, cut_path) = &closed[rng.random_range(0..closed.len())];
    let cut_data = fs::read(cut_path).unwrap();
    let cut_layout = batches(&original_or(&cut_data, cut_path, flip_path, &original));
    let cut = rng.random_range(0..cut_data.len());
    truncate(cut_path, cut);
    for b in cut_layout.iter().filter(|b| b.bytes.end > cut) {
        expected_lost.extend(b.offsets.clone());
    }
    eprintln!("expected lost offsets: {:?}", ranges_of(&expected_lost));

    let (listing, verified) = verify_damage(&data);
    assert_eq!(
        set_of(&verified),
        expected_lost,
        "verify lists exactly the damaged ranges:\n{listing}"
    );
    for p in [flip_path, cut_path] {
        assert!(
            listing.contains(&*p.to_string_lossy()),
            "verify names {}",
            p.display()
        );
    }

    broker.restart();
    let mut c = broker.client().await;
    let (got, lost) = read_around_damage(&mut c, 0).await;
    for o in 0..total {
        if expected_lost.contains(&o) {
            assert!(
                !got.contains_key(&o),
                "offset {o} is damaged but was served"
            );
        } else {
            let r = got
                .get(&o)
                .unwrap_or_else(|| panic!("intact offset {o} was not served"));
            assert_record_intact(r, o);
        }
    }
    assert_eq!(
        set_of(&lost),
        expected_lost,
        "DATA_LOSS named every lost offset"
    );
    let mut data_loss = lost.len() as u64;

    // Point reads: inside every lost range, and at the intact neighbours of each.
    for range in ranges_of(&expected_lost) {
        let inside = rng.random_range(range.clone());
        let s = status(read(&mut c, TOPIC, 0, inside, 1).await);
        assert_eq!(s.code(), Code::DataLoss, "{}", s.message());
        let named = lost_ranges(s.message());
        assert!(
            named.len() == 1 && named[0].contains(&inside) && named[0].end <= range.end,
            "{inside}: {}",
            s.message()
        );
        data_loss += 1;
        for o in [range.start.checked_sub(1), Some(range.end)]
            .into_iter()
            .flatten()
            .filter(|o| *o < total)
        {
            let r = read(&mut c, TOPIC, 0, o, 1).await.unwrap();
            assert_record_intact(&r.records[0], o);
        }
    }
    assert_eq!(
        data_loss_metric(&broker),
        data_loss,
        "every DATA_LOSS is counted"
    );
    assert!(
        broker.log().contains("corrupt batch"),
        "the damage is logged:\n{}",
        broker.log()
    );

    // A subscriber gets every record up to the first damage, then DATA_LOSS.
    let first_lost = *expected_lost.first().unwrap();
    let mut stream = subscribe(
        &mut c,
        SubscribeRequest {
            topic: TOPIC.into(),
            start: start(Kind::Earliest),
            ..SubscribeRequest::default()
        },
    )
    .await
    .unwrap();
    let mut next = 0;
    let err = loop {
        match within("Subscribe message", stream.message()).await {
            Ok(Some(m)) => {
                for r in m.records {
                    assert_eq!(r.offset, next);
                    assert_record_intact(&r, next);
                    next += 1;
                }
            }
            Ok(None) => panic!("the stream ended without an error"),
            Err(s) => break s,
        }
    };
    assert_eq!(next, first_lost, "delivered everything before the damage");
    assert_eq!(err.code(), Code::DataLoss, "{}", err.message());

    // The partition keeps taking appends.
    let a = append(
        &mut c,
        TOPIC,
        0,
        vec![rec_at(value_for(total), ts_for(total))],
    )
    .await;
    assert_eq!(a.base_offset, total);
    let r = read(&mut c, TOPIC, 0, total, 1).await.unwrap();
    assert_record_intact(&r.records[0], total);

    // The broker never silently drops the damaged bytes: verify still reports them.
    broker.stop().await;
    let (_, again) = verify_damage(&data);
    assert_eq!(set_of(&again), expected_lost);
}

/// The layout of the truncated file before any damage (the flip may have hit it too).
fn original_or(current: &[u8], path: &Path, flipped: &Path, original: &[u8]) -> Vec<u8> {
    if path == flipped {
        original.to_vec()
    } else {
        current.to_vec()
    }
}

fn ranges_of(set: &BTreeSet<u64>) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for &o in set {
        match out.last_mut() {
            Some(r) if r.end == o => r.end += 1,
            _ => out.push(o..o + 1),
        }
    }
    out
}

#[tokio::test]
async fn a_closed_segment_cut_to_nothing_is_data_loss_for_its_whole_range() {
    let mut broker = filled_broker(1, 200).await;
    let data = broker.data_dir().to_path_buf();
    let logs = segment_files(&partition_dir(&data, 0), "log");
    let (base, path) = &logs[1];
    let next = logs[2].0;
    truncate(path, 0);
    let (listing, ranges) = verify_damage(&data);
    assert_eq!(ranges, vec![*base..next], "{listing}");
    broker.restart();
    let mut c = broker.client().await;
    let (got, lost) = read_around_damage(&mut c, 0).await;
    assert_eq!(lost, vec![*base..next]);
    assert_eq!(got.len() as u64, 2000 - (next - base));
    for (o, r) in &got {
        assert_record_intact(r, *o);
    }
    assert_eq!(data_loss_metric(&broker), 1);
}

#[tokio::test]
async fn a_timestamp_subscription_over_damage_names_the_lost_offsets_and_is_counted() {
    let mut broker = filled_broker(1, 150).await;
    let data = broker.data_dir().to_path_buf();
    let logs = segment_files(&partition_dir(&data, 0), "log");
    let (base, path) = &logs[1];
    let layout = batches(&fs::read(path).unwrap());
    // Damage the segment's third batch (a CRC-covered byte), then look up a time after it.
    let victim = layout[2].clone();
    let mut bytes = fs::read(path).unwrap();
    bytes[victim.bytes.start + 40] ^= 0xff;
    fs::write(path, &bytes).unwrap();
    broker.restart();
    let mut c = broker.client().await;
    let target = victim.offsets.end + 5;
    assert!(*base < victim.offsets.start);
    let r = first_offset_at(&mut c, 0, ts_for(target)).await;
    match r {
        Ok(o) => assert_eq!(o, target, "the lookup resumes after the damage"),
        Err(s) => {
            assert_eq!(s.code(), Code::DataLoss);
            assert_eq!(
                lost_ranges(s.message()),
                vec![victim.offsets.clone()],
                "the message names the lost offsets: {}",
                s.message()
            );
            assert_eq!(data_loss_metric(&broker), 1, "counted");
        }
    }
}
