//! Batch encoding and decoding: pure functions over bytes, no I/O.
//!
//! One append writes one batch. The exact layout is drawn in `docs/format.md`; in short (all
//! integers little-endian):
//!
//! ```text
//! 0   u64 base_offset
//! 8   u32 length            bytes after this field
//! 12  u32 magic             "SPLB"
//! 16  u8  version           2, 3 when compressed, 4 when sparse (1 is still read)
//! 17  u32 crc32             crc32fast over bytes 21..12+length
//! 21  u16 attributes        bits 0-2 compression codec (0 = none, 1 = lz4, 2 = zstd),
//!                           bit 3 set in exactly the sparse batches (version 4)
//! 23  u32 record_count
//! 27  i64 first_timestamp_ms
//! 35  i64 max_timestamp_ms
//! 43  u64 producer_id       0 = not idempotent
//! 51  u16 producer_epoch
//! 53  u64 sequence          per batch, not per record
//! 61  i64 append_time_ms    the broker's clock when it appended the batch (version 2)
//! 69  records...            (at 61 in version 1; chunks after a u32 in version 3, see
//!                           `compress`)
//! ```
//!
//! Version 4 (sparse, written by compaction) adds `u32 offset_span` at 69: the batch
//! covers offsets `base_offset..base_offset + offset_span`, its records carry increasing
//! offset deltas below the span and may be fewer than it, or none. Its records follow at
//! 73, or with a codec `u32 uncompressed_len` at 73 and chunks at 77.
//!
//! Each record: varint body length, then varint offset delta, zigzag-varint timestamp delta
//! (from `first_timestamp_ms`), varint key length + key, varint value length + value, varint
//! header count, and per header varint key length + UTF-8 key, varint value length + value.

mod compress;
mod records;

use bytes::Bytes;

pub use compress::{
    Budget, CHUNK_TARGET, Codec, Compression, MAX_CHUNK_RAW, encode as encode_compressed,
    encode_sparse as encode_sparse_compressed,
};
pub use records::Batch;

/// Bytes of the fixed batch header this build writes (version 2).
pub const HEADER_LEN: usize = 69;
/// Bytes of the shortest header any readable version has (version 1): the least a scan for
/// a batch must find before it can read the version.
pub const MIN_HEADER_LEN: usize = 61;
/// `"SPLB"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SPLB");
/// The format version this build writes for uncompressed batches. Version 1 (no append
/// time) is still read.
pub const VERSION: u8 = 2;
/// The format version of compressed batches: version 2's header, then the records'
/// uncompressed length and compressed chunks.
pub const COMPRESSED_VERSION: u8 = 3;
/// Bytes of a compressed batch's fixed header (version 3).
pub const COMPRESSED_HEADER_LEN: usize = 73;
/// The format version of sparse batches (compaction's output): version 2's header and an
/// offset span, records at any offsets inside it (see the module doc).
pub const SPARSE_VERSION: u8 = 4;
/// Bytes of a sparse batch's fixed header without a codec (with one, 4 more).
pub const SPARSE_HEADER_LEN: usize = 73;
/// Offset of the first byte the CRC covers.
pub const CRC_START: usize = 21;
/// Compression codecs live in the low three bits of `attributes`.
pub(super) const CODEC_MASK: u16 = 0b111;
/// Set in exactly the sparse batches (version 4): the version byte lies outside the CRC,
/// so this bit inside it tells a sparse batch from one whose version byte flipped.
const SPARSE_BIT: u16 = 0b1000;

/// One record as appended: the broker fills `timestamp_ms` before it reaches the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
    pub timestamp_ms: i64,
}

/// A record header; order is kept and keys may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Bytes,
}

/// A record read back from the log: zero-copy views into the mapped batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

impl StoredRecord {
    /// Payload size used for read limits: key, value and header bytes.
    pub fn payload_len(&self) -> usize {
        self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.len())
                .sum::<usize>()
    }
}

/// Idempotence stamp of a batch: one sequence number per batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: u64,
    pub producer_epoch: u16,
    pub sequence: u64,
}

/// The fixed header of a batch, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    /// Total bytes of the batch, header included.
    pub total_len: usize,
    pub crc: u32,
    pub attributes: u16,
    pub record_count: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer: ProducerStamp,
    /// The format version the batch was written in.
    pub version: u8,
    /// The broker's clock when it appended the batch, which retention and producer expiry
    /// measure from (client timestamps may lie). Version 1 did not store it: there it is
    /// the batch's newest record timestamp, the best estimate such a batch has.
    pub append_time_ms: i64,
    /// Bytes of the records once inflated (version 3); 0 for uncompressed batches.
    pub uncompressed_len: u32,
    /// Offsets the batch covers from `base_offset`: `record_count`, except in a sparse
    /// batch (version 4), whose records may be fewer.
    pub offset_span: u32,
}

impl BatchHeader {
    /// Bytes of this batch's fixed header: where its records start.
    pub fn header_len(&self) -> usize {
        header_len(self.version, self.codec())
    }

    /// Whether records carry their own offsets (version 4), which may leave gaps.
    pub fn is_sparse(&self) -> bool {
        self.version == SPARSE_VERSION
    }

    /// How the records are stored.
    pub fn codec(&self) -> Codec {
        Codec::from_bits(self.attributes & CODEC_MASK).unwrap_or_default()
    }

    /// The offset after this batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.offset_span)
    }
}

/// Bytes of the fixed header of a batch of `version` stored with `codec`.
fn header_len(version: u8, codec: Codec) -> usize {
    match (version, codec.is_none()) {
        (1, _) => MIN_HEADER_LEN,
        (COMPRESSED_VERSION, _) => COMPRESSED_HEADER_LEN,
        (SPARSE_VERSION, true) => SPARSE_HEADER_LEN,
        (SPARSE_VERSION, false) => SPARSE_HEADER_LEN + 4,
        _ => HEADER_LEN,
    }
}

/// Why bytes are not a valid batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("bad length {0}")]
    BadLength(u32),
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported format version {0}")]
    BadVersion(u8),
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("unsupported attributes {0:#06x}")]
    BadAttributes(u16),
    #[error("malformed record: {0}")]
    BadRecord(&'static str),
    /// Inflating a compressed chunk would take the decompression budget past its limit.
    #[error(
        "inflating {needed} bytes would exceed the decompression memory budget of {limit} bytes"
    )]
    OverBudget { needed: usize, limit: usize },
}

/// Encodes one batch into `out` (cleared first) and returns its header; `append_time_ms` is
/// the broker's clock at the append.
///
/// `records` must not be empty; the caller checks size limits.
pub fn encode(
    out: &mut Vec<u8>,
    base_offset: u64,
    producer: ProducerStamp,
    records: &[Record],
    append_time_ms: i64,
) -> BatchHeader {
    let span = records.len() as u32;
    let records = records.iter().zip(0..);
    write(
        out,
        VERSION,
        (base_offset, span),
        producer,
        records,
        append_time_ms,
    )
}

/// Encodes a sparse batch (version 4, uncompressed) covering `base_offset..base_offset +
/// offset_span`: each record at `base_offset + delta`, deltas increasing and below the
/// span; `records` may be empty. Compaction writes these; they carry no producer stamp.
pub fn encode_sparse(
    out: &mut Vec<u8>,
    base_offset: u64,
    offset_span: u32,
    records: &[(u32, Record)],
    append_time_ms: i64,
) -> BatchHeader {
    debug_assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
    debug_assert!(records.last().is_none_or(|(d, _)| *d < offset_span));
    let records = records.iter().map(|(d, r)| (r, *d));
    let at = (base_offset, offset_span);
    write(
        out,
        SPARSE_VERSION,
        at,
        ProducerStamp::default(),
        records,
        append_time_ms,
    )
}

/// Writes an uncompressed batch of `version` (2 or 4) at `(base_offset, offset_span)`.
fn write<'a>(
    out: &mut Vec<u8>,
    version: u8,
    (base_offset, offset_span): (u64, u32),
    producer: ProducerStamp,
    records: impl Iterator<Item = (&'a Record, u32)> + Clone,
    append_time_ms: i64,
) -> BatchHeader {
    out.clear();
    let first_ts = records
        .clone()
        .next()
        .map_or(i64::MIN, |(r, _)| r.timestamp_ms);
    let max_ts = records
        .clone()
        .map(|(r, _)| r.timestamp_ms)
        .max()
        .unwrap_or(first_ts);
    let header_len = header_len(version, Codec::None);
    out.resize(header_len, 0);
    // One copy: each record's length is computed first, so its fields go straight into
    // `out` (the writer reuses `out` between appends, so it rarely reallocates).
    let mut count = 0u32;
    for (r, delta) in records {
        count += 1;
        let ts_delta = zigzag(r.timestamp_ms.wrapping_sub(first_ts));
        let len = record_body_len(r, delta, first_ts);
        put_varint(out, len as u64);
        put_varint(out, u64::from(delta));
        put_varint(out, ts_delta);
        put_bytes(out, &r.key);
        put_bytes(out, &r.value);
        put_varint(out, r.headers.len() as u64);
        for h in &r.headers {
            put_bytes(out, h.key.as_bytes());
            put_bytes(out, &h.value);
        }
    }
    let total_len = out.len();
    let header = BatchHeader {
        base_offset,
        total_len,
        crc: 0,
        attributes: if version == SPARSE_VERSION {
            SPARSE_BIT
        } else {
            0
        },
        record_count: count,
        first_timestamp_ms: first_ts,
        max_timestamp_ms: max_ts,
        producer,
        version,
        append_time_ms,
        uncompressed_len: 0,
        offset_span,
    };
    out[0..8].copy_from_slice(&base_offset.to_le_bytes());
    out[8..12].copy_from_slice(&((total_len - 12) as u32).to_le_bytes());
    out[12..16].copy_from_slice(&MAGIC.to_le_bytes());
    out[16] = version;
    out[21..23].copy_from_slice(&header.attributes.to_le_bytes());
    out[23..27].copy_from_slice(&header.record_count.to_le_bytes());
    out[27..35].copy_from_slice(&first_ts.to_le_bytes());
    out[35..43].copy_from_slice(&max_ts.to_le_bytes());
    out[43..51].copy_from_slice(&producer.producer_id.to_le_bytes());
    out[51..53].copy_from_slice(&producer.producer_epoch.to_le_bytes());
    out[53..61].copy_from_slice(&producer.sequence.to_le_bytes());
    out[61..69].copy_from_slice(&append_time_ms.to_le_bytes());
    if version == SPARSE_VERSION {
        out[69..73].copy_from_slice(&offset_span.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_le_bytes());
    BatchHeader { crc, ..header }
}

/// The bytes format version 1 would have written for the version 2 batch `v2` (no append
/// time): for tests and fuzzing of data written by older builds.
pub fn as_version_1(v2: &[u8]) -> Vec<u8> {
    let mut v1 = [&v2[..MIN_HEADER_LEN], &v2[HEADER_LEN..]].concat();
    v1[16] = 1;
    let len = (v1.len() - 12) as u32;
    v1[8..12].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&v1[CRC_START..]);
    v1[17..21].copy_from_slice(&crc.to_le_bytes());
    v1
}

/// Exact encoded size of one record (length prefix included), for limit checks.
pub fn record_encoded_len(r: &Record, index: usize, first_ts: i64) -> usize {
    let n = record_body_len(r, index as u32, first_ts);
    n + varint_len(n as u64)
}

/// Bytes of one record after its length prefix.
fn record_body_len(r: &Record, delta: u32, first_ts: i64) -> usize {
    let mut n = varint_len(u64::from(delta))
        + varint_len(zigzag(r.timestamp_ms.wrapping_sub(first_ts)))
        + bytes_len(r.key.len())
        + bytes_len(r.value.len())
        + varint_len(r.headers.len() as u64);
    for h in &r.headers {
        n += bytes_len(h.key.len()) + bytes_len(h.value.len());
    }
    n
}

/// Decodes the fixed header at the start of `buf` and checks length, magic, version and
/// attributes, but not the CRC (see [`check`]).
pub fn decode_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < MIN_HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: MIN_HEADER_LEN,
            available: buf.len(),
        });
    }
    let length = le_u32(buf, 8);
    if (length as usize) < MIN_HEADER_LEN - 12 {
        return Err(BatchError::BadLength(length));
    }
    let magic = le_u32(buf, 12);
    if magic != MAGIC {
        return Err(BatchError::BadMagic(magic));
    }
    let version = buf[16];
    if !(1..=SPARSE_VERSION).contains(&version) {
        return Err(BatchError::BadVersion(version));
    }
    // Attributes sit inside every version's header (checked long enough above).
    let attributes = u16::from_le_bytes([buf[21], buf[22]]);
    // Versions 1 and 2 hold uncompressed records; version 3 names its codec; version 4
    // may have one.
    let codec = Codec::from_bits(attributes & CODEC_MASK);
    let codec_ok = match codec {
        Some(Codec::None) => version != COMPRESSED_VERSION,
        Some(_) => version >= COMPRESSED_VERSION,
        None => false,
    };
    let sparse_ok = (attributes & SPARSE_BIT != 0) == (version == SPARSE_VERSION);
    if attributes & !(CODEC_MASK | SPARSE_BIT) != 0 || !codec_ok || !sparse_ok {
        return Err(BatchError::BadAttributes(attributes));
    }
    let header_len = header_len(version, codec.unwrap_or_default());
    if (length as usize) < header_len - 12 {
        return Err(BatchError::BadLength(length));
    }
    if buf.len() < header_len {
        return Err(BatchError::Truncated {
            needed: header_len,
            available: buf.len(),
        });
    }
    let sparse = version == SPARSE_VERSION;
    let record_count = le_u32(buf, 23);
    if record_count == 0 && !sparse {
        return Err(BatchError::BadRecord("batch with zero records"));
    }
    let offset_span = if sparse {
        le_u32(buf, HEADER_LEN)
    } else {
        record_count
    };
    if offset_span == 0 || offset_span < record_count {
        return Err(BatchError::BadRecord(
            "sparse batch spans fewer offsets than it has records",
        ));
    }
    let base_offset = le_u64(buf, 0);
    if base_offset.checked_add(u64::from(offset_span)).is_none() {
        // `next_offset` and every record's offset must fit in a u64 (found by fuzzing:
        // such a header made `records` and `next_offset` overflow).
        return Err(BatchError::BadRecord("offsets run past u64::MAX"));
    }
    let max_timestamp_ms = le_u64(buf, 35) as i64;
    Ok(BatchHeader {
        base_offset,
        total_len: length as usize + 12,
        crc: le_u32(buf, 17),
        attributes,
        record_count,
        first_timestamp_ms: le_u64(buf, 27) as i64,
        max_timestamp_ms,
        producer: ProducerStamp {
            producer_id: le_u64(buf, 43),
            producer_epoch: u16::from_le_bytes([buf[51], buf[52]]),
            sequence: le_u64(buf, 53),
        },
        version,
        append_time_ms: if version == 1 {
            max_timestamp_ms
        } else {
            le_u64(buf, 61) as i64
        },
        uncompressed_len: match (version, header_len) {
            (COMPRESSED_VERSION, _) => le_u32(buf, HEADER_LEN),
            (SPARSE_VERSION, l) if l > SPARSE_HEADER_LEN => le_u32(buf, SPARSE_HEADER_LEN),
            _ => 0,
        },
        offset_span,
    })
}

/// Decodes and fully validates (CRC included) the batch at the start of `buf`.
pub fn check(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = decode_header(buf)?;
    if buf.len() < h.total_len {
        return Err(BatchError::Truncated {
            needed: h.total_len,
            available: buf.len(),
        });
    }
    let computed = crc32fast::hash(&buf[CRC_START..h.total_len]);
    if computed != h.crc {
        return Err(BatchError::BadCrc {
            stored: h.crc,
            computed,
        });
    }
    Ok(h)
}

/// The version of the batch at the start of `buf` if it is one a later build wrote: its
/// magic, length and CRC hold but this build does not know its version. Recovery refuses
/// such a log instead of cutting data it cannot read.
pub fn future_version(buf: &[u8]) -> Option<u8> {
    if buf.len() < MIN_HEADER_LEN || le_u32(buf, 12) != MAGIC || buf[16] <= SPARSE_VERSION {
        return None;
    }
    let total = (le_u32(buf, 8) as usize).checked_add(12)?;
    let body = buf.get(CRC_START..total)?;
    if crc32fast::hash(body) != le_u32(buf, 17) {
        return None;
    }
    // The version byte lies outside the CRC: a batch that is valid once its version is
    // put back to one this build knows is a known batch with a flipped byte (damage), not
    // newer data. (A later format must therefore differ inside the CRC too.)
    let mut copy = buf[..total].to_vec();
    for v in [1, VERSION, COMPRESSED_VERSION, SPARSE_VERSION] {
        copy[16] = v;
        if check(&copy).is_ok() {
            return None;
        }
    }
    Some(buf[16])
}

/// Sets the base offset of the encoded batch `buf` (outside the CRC): a batch encoded
/// before its offset was known, compressed outside the writer's lock, gets it under the
/// lock.
pub fn set_base_offset(buf: &mut [u8], base_offset: u64) {
    buf[..8].copy_from_slice(&base_offset.to_le_bytes());
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn bytes_len(n: usize) -> usize {
    varint_len(n as u64) + n
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests;
