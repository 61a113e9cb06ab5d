//! Harness of the `batch_decode` target: `batch::decode_header`, `batch::check`,
//! `Batch::parse` and `Batch::records` over arbitrary bytes never panic, agree with each
//! other, and whatever they accept is self-consistent; records encoded by `batch::encode`
//! (and compressed by `batch::encode_compressed`, lz4 or zstd) decode back equal.
//! Compressed chunks inflate within an 8 MiB budget, so a chunk claiming more is refused
//! by the bound, never an out-of-memory.
//!
//! Input: the first byte picks the mode.
//! - `0`: the rest is decoded as it is (the CRC guards nearly everything behind it).
//! - `1`: the rest gets a correct CRC first, so the fuzzer reaches the record decoder.
//! - otherwise: the rest describes records (see [`round_trip`]), which are encoded, decoded
//!   and compared.

use bytes::Bytes;
use spool_storage::batch::{self, Batch, Codec, Compression, HEADER_LEN, MIN_HEADER_LEN};
use spool_storage::{Header, ProducerStamp, Record};

use crate::input::Reader;

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => decode_raw(rest.to_vec()),
        1 => {
            let mut bytes = rest.to_vec();
            fix_crc(&mut bytes);
            decode_raw(bytes);
        }
        _ => round_trip(&mut Reader::new(rest)),
    }
}

/// Recomputes the CRC of the batch at the start of `buf` over what its length field claims
/// (cut to the buffer).
pub fn fix_crc(buf: &mut [u8]) {
    if buf.len() < MIN_HEADER_LEN {
        return;
    }
    let length = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    let total = length.saturating_add(12).clamp(21, buf.len());
    let crc = crc32fast::hash(&buf[21..total]);
    buf[17..21].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes arbitrary bytes every way there is and checks the answers agree.
fn decode_raw(bytes: Vec<u8>) {
    let bytes = Bytes::from(bytes);
    let header = batch::decode_header(&bytes);
    let checked = batch::check(&bytes);
    if let Ok(h) = &header {
        assert!(
            h.total_len >= h.header_len(),
            "header shorter than its fixed part"
        );
        assert!(h.record_count > 0, "a batch with zero records was accepted");
        assert!(
            h.base_offset
                .checked_add(u64::from(h.record_count))
                .is_some(),
            "a header whose offsets run past u64::MAX was accepted"
        );
    }
    match (&header, &checked) {
        (Ok(h), Ok(c)) => {
            assert_eq!(h, c, "check and decode_header disagree");
            assert!(
                c.total_len <= bytes.len(),
                "check accepted a batch past the buffer"
            );
        }
        (Err(h), Err(c)) => assert_eq!(h, c, "check failed differently from decode_header"),
        (Err(_), Ok(_)) => panic!("check accepted what decode_header refused"),
        (Ok(_), Err(_)) => {} // truncated or bad CRC
    }
    let parsed = Batch::parse(&bytes);
    assert_eq!(
        parsed.as_ref().map(|b| b.header).map_err(Clone::clone),
        checked,
        "Batch::parse and check disagree"
    );
    let Ok(batch) = parsed else { return };
    assert_eq!(batch.bytes.len(), batch.header.total_len);
    let budget = batch::Budget::new(8 << 20);
    let Ok(records) = batch.records_from(batch.header.base_offset, usize::MAX, &budget) else {
        return;
    };
    assert_eq!(records.len(), batch.header.record_count as usize);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, batch.header.base_offset + i as u64);
        assert!(bytes.len() >= batch.header.header_len() + r.payload_len());
    }
    // Decoded records re-encode into a batch that decodes to the same records (the bytes may
    // differ: non-minimal varints and the header's timestamps are not canonicalised).
    let again: Vec<Record> = records
        .iter()
        .map(|r| Record {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp_ms: r.timestamp_ms,
        })
        .collect();
    let mut buf = Vec::new();
    batch::encode(
        &mut buf,
        batch.header.base_offset,
        batch.header.producer,
        &again,
        batch.header.append_time_ms,
    );
    let reparsed = Batch::parse(&Bytes::from(buf)).expect("a re-encoded batch parses");
    assert_eq!(
        reparsed.records().expect("re-encoded records decode"),
        records,
        "re-encoding changed the records"
    );
}

/// Reads a record: key, value, up to three headers, a timestamp.
pub fn record(r: &mut Reader<'_>, max_value: usize) -> Record {
    let key = Bytes::copy_from_slice(r.bytes(32));
    let value = Bytes::copy_from_slice(r.bytes(max_value));
    let headers = (0..r.u8() % 4)
        .map(|_| Header {
            key: String::from_utf8_lossy(r.bytes(16)).into_owned(),
            value: Bytes::copy_from_slice(r.bytes(16)),
        })
        .collect();
    Record {
        key,
        value,
        headers,
        timestamp_ms: r.timestamp(),
    }
}

/// Input: base offset (u64, or near `u64::MAX`), producer stamp, record count, records.
fn round_trip(r: &mut Reader<'_>) {
    let base_offset = match r.u8() % 4 {
        0 => u64::MAX - u64::from(r.u8()),
        _ => r.u64(),
    };
    let stamp = ProducerStamp {
        producer_id: r.u64(),
        producer_epoch: r.u16(),
        sequence: r.u64(),
    };
    let count = 1 + usize::from(r.u8() % 16);
    let records: Vec<Record> = (0..count).map(|_| record(r, 300)).collect();
    let mut buf = Vec::new();
    let header = batch::encode(
        &mut buf,
        base_offset,
        stamp,
        &records,
        stamp.sequence as i64,
    );
    assert_eq!(header.total_len, buf.len());
    let first_ts = records[0].timestamp_ms;
    let predicted: usize = records
        .iter()
        .enumerate()
        .map(|(i, rec)| batch::record_encoded_len(rec, i, first_ts))
        .sum();
    assert_eq!(
        HEADER_LEN + predicted,
        buf.len(),
        "record_encoded_len is exact"
    );
    let v1 = Bytes::from(batch::as_version_1(&buf));
    let parsed = Batch::parse(&Bytes::from(buf));
    if base_offset.checked_add(count as u64).is_none() {
        // Offsets past u64::MAX cannot exist: the decoder must refuse them, not wrap.
        assert!(
            parsed.is_err(),
            "a batch whose offsets run past u64::MAX was accepted"
        );
        return;
    }
    let parsed = parsed.expect("an encoded batch parses");
    assert_eq!(parsed.header, header);
    assert_eq!(parsed.header.producer, stamp);
    let got = parsed.records().expect("encoded records decode");
    assert_eq!(got.len(), records.len());
    for (i, (g, want)) in got.iter().zip(&records).enumerate() {
        assert_eq!(g.offset, base_offset + i as u64);
        assert_eq!(g.key, want.key);
        assert_eq!(g.value, want.value);
        assert_eq!(g.headers, want.headers);
        assert_eq!(g.timestamp_ms, want.timestamp_ms);
    }
    // The same batch as format version 1 wrote it reads to the same records, its newest
    // timestamp standing in for the append time it did not store.
    let old = Batch::parse(&v1).expect("a version 1 batch parses");
    assert_eq!(old.header.append_time_ms, header.max_timestamp_ms);
    assert_eq!(old.records().expect("version 1 records decode"), got);
    // Compressed (or stored plain when that does not shrink it): the same records.
    let (codec, level) = match r.u8() % 3 {
        0 => (Codec::Lz4, 0),
        1 => (Codec::Zstd, i32::from(r.u8() % 30) - 7),
        _ => (Codec::Zstd, 0),
    };
    let c = Compression {
        codec,
        level: level.min(22),
    };
    let mut buf = Vec::new();
    let h = batch::encode_compressed(&mut buf, base_offset, stamp, &records, 5, c);
    assert_eq!(h.total_len, buf.len());
    let parsed = Batch::parse(&Bytes::from(buf)).expect("a compressed batch parses");
    assert_eq!(parsed.header, h);
    assert_eq!(parsed.records().expect("compressed records decode"), got);
}
