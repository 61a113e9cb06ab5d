use super::records::Cursor;
use super::*;

fn rec(key: &str, value: &str, ts: i64) -> Record {
    Record {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        headers: vec![
            Header {
                key: "h".into(),
                value: Bytes::from_static(b"1"),
            },
            Header {
                key: "h".into(),
                value: Bytes::from_static(b"2"),
            },
        ],
        timestamp_ms: ts,
    }
}

#[test]
fn batch_round_trips_records_headers_and_stamp() {
    let records = vec![
        rec("k1", "v1", 1000),
        rec("", "", 990),
        rec("k3", "vvv", 2000),
    ];
    let stamp = ProducerStamp {
        producer_id: 7,
        producer_epoch: 2,
        sequence: 41,
    };
    let mut buf = Vec::new();
    let h = encode(&mut buf, 100, stamp, &records, 5000);
    assert_eq!(h.append_time_ms, 5000);
    assert_eq!(h.total_len, buf.len());
    assert_eq!(h.max_timestamp_ms, 2000);
    assert_eq!(h.first_timestamp_ms, 1000);
    let batch = Batch::parse(&Bytes::from(buf)).unwrap();
    assert_eq!(batch.header, h);
    assert_eq!(batch.header.producer, stamp);
    let got = batch.records().unwrap();
    assert_eq!(got.len(), 3);
    for (i, (g, r)) in got.iter().zip(&records).enumerate() {
        assert_eq!(g.offset, 100 + i as u64);
        assert_eq!(g.key, r.key);
        assert_eq!(g.value, r.value);
        assert_eq!(g.headers, r.headers);
        assert_eq!(g.timestamp_ms, r.timestamp_ms);
    }
}

#[test]
fn a_read_from_the_middle_of_a_batch_decodes_only_what_it_returns() {
    let records: Vec<Record> = (0..10).map(|i| rec("k", &format!("v{i}"), i)).collect();
    let mut buf = Vec::new();
    encode(&mut buf, 100, ProducerStamp::default(), &records, 0);
    let batch = Batch::parse(&Bytes::from(buf)).unwrap();
    let values = |rs: Vec<StoredRecord>| -> Vec<(u64, Bytes)> {
        rs.into_iter().map(|r| (r.offset, r.value)).collect()
    };
    let got = values(batch.records_from(104, 2, &Budget::unlimited()).unwrap());
    assert_eq!(got, [(104, Bytes::from("v4")), (105, Bytes::from("v5"))]);
    assert_eq!(
        batch
            .records_from(109, 100, &Budget::unlimited())
            .unwrap()
            .len(),
        1
    );
    assert!(
        batch
            .records_from(110, 5, &Budget::unlimited())
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        values(
            batch
                .records_from(0, usize::MAX, &Budget::unlimited())
                .unwrap()
        ),
        values(batch.records().unwrap())
    );
}

#[test]
fn record_encoded_len_matches_encoding() {
    let records = vec![rec("key", &"x".repeat(300), 5), rec("k", "v", -100)];
    let mut buf = Vec::new();
    encode(&mut buf, 0, ProducerStamp::default(), &records, 0);
    let predicted: usize = records
        .iter()
        .enumerate()
        .map(|(i, r)| record_encoded_len(r, i, 5))
        .sum();
    assert_eq!(buf.len(), HEADER_LEN + predicted);
}

#[test]
fn every_single_byte_flip_is_detected() {
    let mut buf = Vec::new();
    encode(
        &mut buf,
        5,
        ProducerStamp::default(),
        &[rec("a", "b", 1)],
        9,
    );
    for i in 8..buf.len() {
        let mut bad = buf.clone();
        bad[i] ^= 0x40;
        assert!(check(&bad).is_err(), "flip at byte {i} went unnoticed");
    }
}

#[test]
fn truncated_batches_are_rejected() {
    let mut buf = Vec::new();
    encode(
        &mut buf,
        0,
        ProducerStamp::default(),
        &[rec("a", "b", 1)],
        9,
    );
    for len in 0..buf.len() {
        assert!(check(&buf[..len]).is_err(), "accepted a batch cut at {len}");
    }
}

#[test]
fn version_1_batches_read_with_their_newest_timestamp_as_append_time() {
    let records = vec![rec("k", "v", 700), rec("k2", "v2", 900)];
    let mut buf = Vec::new();
    encode(&mut buf, 3, ProducerStamp::default(), &records, 123_456);
    let v1 = Bytes::from(as_version_1(&buf));
    let batch = Batch::parse(&v1).unwrap();
    assert_eq!(batch.header.version, 1);
    assert_eq!(batch.header.header_len(), MIN_HEADER_LEN);
    assert_eq!(batch.header.append_time_ms, 900);
    let got = batch.records().unwrap();
    assert_eq!(got[1].value, records[1].value);
    assert_eq!(got[1].offset, 4);
    let mut v5 = buf.clone();
    v5[16] = 5;
    assert_eq!(check(&v5), Err(BatchError::BadVersion(5)));
    // A version byte flipped to 4 (sparse) is caught inside the CRC: the sparse bit.
    let mut v4 = buf.clone();
    v4[16] = 4;
    assert_eq!(check(&v4), Err(BatchError::BadAttributes(0)));
}

#[test]
fn zeroed_bytes_are_not_a_batch() {
    assert!(matches!(check(&[0u8; 128]), Err(BatchError::BadLength(0))));
}

#[test]
fn varints_and_zigzag_round_trip() {
    for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        assert_eq!(b.len(), varint_len(v));
        let mut c = Cursor { buf: &b, pos: 0 };
        assert_eq!(c.varint().unwrap(), v);
    }
    for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
        assert_eq!(unzigzag(zigzag(v)), v);
    }
}

/// Log-line-like records: repetitive enough to compress, different in every record.
fn lines(n: usize, size: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let line = format!(
                "2026-12-07T15:{:02}:{:02}Z INFO request id={i} path=/api/v1/orders/{} status=200 ",
                i % 60,
                i % 59,
                i * 7
            );
            let value = line.repeat(size / line.len() + 1)[..size].to_string();
            rec(&format!("order-{}", i % 100), &value, 1_000 + i as i64)
        })
        .collect()
}

fn compressed(codec: Codec, level: i32, records: &[Record]) -> (Vec<u8>, BatchHeader) {
    let mut buf = Vec::new();
    let stamp = ProducerStamp {
        producer_id: 3,
        producer_epoch: 1,
        sequence: 9,
    };
    let c = Compression { codec, level };
    let h = encode_compressed(&mut buf, 500, stamp, records, 77, c);
    (buf, h)
}

#[test]
fn compressed_batches_read_back_what_was_appended() {
    let records = lines(3_000, 1_000);
    let mut plain = Vec::new();
    let p = encode(&mut plain, 500, ProducerStamp::default(), &records, 77);
    for (codec, level) in [
        (Codec::Lz4, 0),
        (Codec::Zstd, 0),
        (Codec::Zstd, -3),
        (Codec::Zstd, 19),
    ] {
        let (buf, h) = compressed(
            codec,
            level,
            &records[..if level == 19 { 300 } else { 3_000 }],
        );
        let records = &records[..h.record_count as usize];
        assert_eq!(h.version, COMPRESSED_VERSION, "{codec:?}");
        assert_eq!(h.codec(), codec);
        assert!(
            buf.len() * 3 < p.total_len,
            "{codec:?} {level}: {} of {}",
            buf.len(),
            p.total_len
        );
        let batch = Batch::parse(&Bytes::from(buf)).unwrap();
        assert_eq!(batch.header, h);
        assert_eq!(h.producer.sequence, 9);
        let got = batch.records().unwrap();
        assert_eq!(got.len(), records.len());
        for (i, (g, r)) in got.iter().zip(records).enumerate() {
            assert_eq!(g.offset, 500 + i as u64);
            assert_eq!(
                (&g.key, &g.value, &g.headers),
                (&r.key, &r.value, &r.headers)
            );
            assert_eq!(g.timestamp_ms, r.timestamp_ms);
        }
    }
}

#[test]
fn a_read_inside_a_compressed_batch_inflates_only_its_chunk() {
    let records = lines(3_000, 1_000);
    let (buf, h) = compressed(Codec::Zstd, 0, &records);
    let batch = Batch::parse(&Bytes::from(buf)).unwrap();
    assert!(
        h.uncompressed_len as usize > 2 * CHUNK_TARGET,
        "several chunks"
    );
    let budget = Budget::new(CHUNK_TARGET + 64 * 1024);
    let got = batch.records_from(500 + 2_500, 2, &budget).unwrap();
    assert_eq!(got[0].offset, 3_000);
    assert_eq!(got[0].value, records[2_500].value);
    assert!(budget.used() > 0 && budget.used() <= CHUNK_TARGET + 64 * 1024);
    // While those records live, the budget holds their chunk: another read of a
    // different chunk is refused, and succeeds once they are dropped.
    assert!(matches!(
        batch.records_from(500, 1, &budget),
        Err(BatchError::OverBudget { .. })
    ));
    drop(got);
    assert_eq!(budget.used(), 0);
    assert_eq!(batch.records_from(500, 1, &budget).unwrap()[0].offset, 500);
    // A read running into a chunk the budget cannot hold returns what it has.
    let some = batch.records_from(500, usize::MAX, &budget).unwrap();
    assert!(!some.is_empty() && some.len() < 3_000, "{}", some.len());
}

#[test]
fn incompressible_records_are_stored_uncompressed() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..4_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let records = vec![Record {
        value: Bytes::from(noise),
        ..Record::default()
    }];
    let (buf, h) = compressed(Codec::Lz4, 0, &records);
    assert_eq!((h.version, h.codec()), (VERSION, Codec::None));
    assert_eq!(
        Batch::parse(&Bytes::from(buf)).unwrap().records().unwrap()[0].value,
        records[0].value
    );
}

#[test]
fn every_byte_flip_of_a_compressed_batch_is_detected() {
    let (buf, _) = compressed(Codec::Lz4, 0, &lines(20, 100));
    for i in 8..buf.len() {
        let mut bad = buf.clone();
        bad[i] ^= 0x10;
        assert!(check(&bad).is_err(), "flip at byte {i} went unnoticed");
    }
}

/// Re-seals `buf` after an edit, as a crafted file would.
fn reseal(buf: &mut [u8]) {
    let crc = crc32fast::hash(&buf[CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn a_chunk_claiming_gigabytes_is_refused_before_anything_is_allocated() {
    let (mut buf, _) = compressed(Codec::Zstd, 0, &lines(20, 100));
    // The first chunk's raw_len (at 73 + 4) claims 3 GiB, the header agrees.
    let at = COMPRESSED_HEADER_LEN + 4;
    let claimed = 3u32 << 30;
    let old = le_u32(&buf, at);
    buf[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
    let total = le_u32(&buf, HEADER_LEN) - old + claimed;
    buf[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&total.to_le_bytes());
    reseal(&mut buf);
    let batch = Batch::parse(&Bytes::from(buf.clone())).expect("the CRC holds");
    assert!(matches!(batch.records(), Err(BatchError::BadRecord(_))));
    // Within the chunk bound but past the budget: refused by the budget.
    let claimed = (MAX_CHUNK_RAW / 2) as u32;
    buf[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
    let total = total - (3u32 << 30) + claimed;
    buf[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&total.to_le_bytes());
    reseal(&mut buf);
    let batch = Batch::parse(&Bytes::from(buf)).unwrap();
    let budget = Budget::new(16 * 1024 * 1024);
    assert!(matches!(
        batch.records_from(0, 1, &budget),
        Err(BatchError::OverBudget { .. })
    ));
    // With room, the chunk inflates to less than it claims: damage, not data.
    assert!(matches!(batch.records(), Err(BatchError::BadRecord(_))));
}

#[test]
fn a_crc_valid_batch_of_a_later_version_is_told_apart_from_damage() {
    let mut buf = Vec::new();
    encode(
        &mut buf,
        0,
        ProducerStamp::default(),
        &[rec("a", "b", 1)],
        9,
    );
    assert_eq!(future_version(&buf), None);
    // A known batch whose (uncovered) version byte flipped is damage, not newer data.
    buf[16] = 2 ^ 0x80;
    assert_eq!(future_version(&buf), None);
    // A newer build's batch differs inside the CRC too (here: attributes it alone knows).
    buf[16] = 9;
    buf[21] = 0x40;
    reseal(&mut buf);
    assert_eq!(future_version(&buf), Some(9));
    assert_eq!(check(&buf), Err(BatchError::BadVersion(9)));
    buf[30] ^= 1;
    assert_eq!(
        future_version(&buf),
        None,
        "a damaged batch is not a newer one"
    );
}

#[test]
fn version_3_needs_a_codec_and_versions_1_and_2_refuse_one() {
    let (mut v3, _) = compressed(Codec::Lz4, 0, &lines(20, 100));
    v3[21] = 0;
    reseal(&mut v3);
    assert_eq!(check(&v3), Err(BatchError::BadAttributes(0)));
    let mut v2 = Vec::new();
    encode(&mut v2, 0, ProducerStamp::default(), &[rec("a", "b", 1)], 9);
    v2[21] = 2;
    reseal(&mut v2);
    assert_eq!(check(&v2), Err(BatchError::BadAttributes(2)));
}

/// Every third record of `lines`, at deltas 0, 3, 6, ... of a span of `3 * n`.
fn sparse_records(n: usize) -> Vec<(u32, Record)> {
    lines(n, 200)
        .into_iter()
        .enumerate()
        .map(|(i, r)| (3 * i as u32, r))
        .collect()
}

#[test]
fn a_sparse_batch_keeps_each_record_at_its_offset_and_spans_its_gaps() {
    let records = sparse_records(40);
    for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
        let mut buf = Vec::new();
        let c = Compression { codec, level: 0 };
        let h = encode_sparse_compressed(&mut buf, 1_000, 120, &records, 55, c);
        assert_eq!(
            (h.version, h.record_count, h.offset_span),
            (SPARSE_VERSION, 40, 120)
        );
        assert_eq!(h.next_offset(), 1_120);
        assert_eq!(h.codec(), codec, "these records compress");
        let batch = Batch::parse(&Bytes::from(buf)).unwrap();
        assert_eq!(batch.header, h);
        let all = batch.records().unwrap();
        let offsets: Vec<u64> = all.iter().map(|r| r.offset).collect();
        let want: Vec<u64> = (0..40).map(|i| 1_000 + 3 * i).collect();
        assert_eq!(offsets, want, "{codec:?}");
        assert_eq!(all[7].value, records[7].1.value);
        // From inside a gap: the next record after it.
        let from_gap = batch.records_from(1_004, 2, &Budget::unlimited()).unwrap();
        assert_eq!(
            from_gap.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [1_006, 1_009]
        );
        // Past the last record, inside the span: nothing.
        assert!(
            batch
                .records_from(1_118, 5, &Budget::unlimited())
                .unwrap()
                .is_empty()
        );
    }
}

#[test]
fn a_sparse_batch_may_hold_no_records_but_not_fewer_offsets_than_records() {
    let mut buf = Vec::new();
    let h = encode_sparse(&mut buf, 10, 500, &[], 1);
    assert_eq!((h.record_count, h.next_offset()), (0, 510));
    let batch = Batch::parse(&Bytes::from(buf.clone())).unwrap();
    assert!(batch.records().unwrap().is_empty());
    // A dense batch of no records stays invalid.
    let mut dense = Vec::new();
    encode(
        &mut dense,
        0,
        ProducerStamp::default(),
        &[rec("a", "b", 1)],
        9,
    );
    dense[23..27].copy_from_slice(&0u32.to_le_bytes());
    reseal(&mut dense);
    assert!(matches!(check(&dense), Err(BatchError::BadRecord(_))));
    // A span of 0, or below the record count, is refused.
    buf[69..73].copy_from_slice(&0u32.to_le_bytes());
    reseal(&mut buf);
    assert!(matches!(check(&buf), Err(BatchError::BadRecord(_))));
}

/// A sparse batch of `records` as given, over `span` offsets (release builds do not check
/// the deltas when encoding).
fn unchecked_sparse(records: &[(u32, Record)], span: u32) -> Batch {
    let mut buf = Vec::new();
    let records = records.iter().map(|(d, r)| (r, *d));
    let h = super::write(
        &mut buf,
        SPARSE_VERSION,
        (0, span),
        ProducerStamp::default(),
        records,
        1,
    );
    Batch {
        header: h,
        bytes: Bytes::from(buf),
    }
}

#[test]
fn a_sparse_batch_with_deltas_out_of_order_or_past_its_span_is_damage() {
    let mut records = sparse_records(3);
    records.swap(0, 1);
    let batch = unchecked_sparse(&records, 9);
    assert!(matches!(batch.records(), Err(BatchError::BadRecord(_))));
    let batch = unchecked_sparse(&sparse_records(3), 6);
    assert!(
        matches!(batch.records(), Err(BatchError::BadRecord(_))),
        "delta 6 of a span of 6"
    );
}
