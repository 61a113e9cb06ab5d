//! Compressed batches (format version 3): the records of a batch encoded as in version 2,
//! cut into chunks of about [`CHUNK_TARGET`] bytes (128 KiB: a streamed read of 256 KiB
//! inflates at worst about twice what it returns, about 1.5 times on average, and chunks
//! stay big enough to compress well) at record boundaries, each compressed on
//! its own, so reading one record inflates one chunk, not the batch.
//!
//! ```text
//! 69  u32 uncompressed_len    sum of every chunk's raw_len
//! 73  chunks, back to back to the batch's end:
//!       u32 stored_len, u32 raw_len, u32 record_count, stored_len bytes
//! ```
//!
//! The CRC covers the stored (compressed) bytes, so damage is found before anything is
//! inflated; `raw_len` is checked against [`MAX_CHUNK_RAW`] and taken from a [`Budget`]
//! before a byte is allocated, so a tiny batch claiming gigabytes is refused, never an
//! out-of-memory.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::{
    BatchError, BatchHeader, COMPRESSED_VERSION, CRC_START, HEADER_LEN, ProducerStamp, Record,
    SPARSE_HEADER_LEN, le_u32, records::Cursor,
};

/// A chunk closes once its records reach this many bytes (a single larger record is a
/// chunk of its own).
pub const CHUNK_TARGET: usize = 128 * 1024;
/// The largest `raw_len` a chunk may claim: records larger than this are stored
/// uncompressed (version 2).
pub const MAX_CHUNK_RAW: usize = 64 * 1024 * 1024;
/// Bytes of a chunk's frame before its stored bytes.
const FRAME_LEN: usize = 12;

/// A batch's compression codec, stored in the low three bits of its `attributes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Codec {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Codec {
    /// The attribute bits of the codec.
    pub fn bits(self) -> u16 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }

    /// The codec of attribute bits; `None` for bits no codec has.
    pub fn from_bits(bits: u16) -> Option<Codec> {
        match bits {
            0 => Some(Codec::None),
            1 => Some(Codec::Lz4),
            2 => Some(Codec::Zstd),
            _ => None,
        }
    }

    pub fn is_none(self) -> bool {
        self == Codec::None
    }
}

/// How a log compresses the batches it appends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compression {
    pub codec: Codec,
    /// 0 = the codec's default; zstd takes -7..=22 (negatives are faster), lz4 has none.
    pub level: i32,
}

/// Bytes of inflated chunks held at once across a storage, shared by every read: a
/// chunk's bytes count from inflation until the last record viewing them is dropped.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// A budget that never refuses (for tools and tests reading one batch).
    pub fn unlimited() -> Arc<Budget> {
        Budget::new(usize::MAX)
    }

    /// Bytes held right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(self: &Arc<Self>, n: usize) -> Result<Held, BatchError> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next =
                used.checked_add(n)
                    .filter(|&u| u <= self.limit)
                    .ok_or(BatchError::OverBudget {
                        needed: n,
                        limit: self.limit,
                    })?;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Held {
                        budget: Arc::clone(self),
                        n,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes taken from a budget, given back on drop.
#[derive(Debug)]
struct Held {
    budget: Arc<Budget>,
    n: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// An inflated chunk and the budget it holds: the owner of the records' `Bytes` views.
struct Inflated {
    raw: Vec<u8>,
    _held: Held,
}

impl AsRef<[u8]> for Inflated {
    fn as_ref(&self) -> &[u8] {
        &self.raw
    }
}

/// One chunk of a compressed batch, located but not inflated.
#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub first_index: u32,
    pub count: u32,
    stored: std::ops::Range<usize>,
    raw_len: usize,
}

thread_local! {
    static ZSTD_IN: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static ZSTD_OUT: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static RAW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes one batch compressed with `c` into `out` (cleared first). Records that do not
/// shrink, or a record too large for a chunk, are written uncompressed (version 2), which
/// is also what `Codec::None` writes.
pub fn encode(
    out: &mut Vec<u8>,
    base_offset: u64,
    producer: ProducerStamp,
    records: &[Record],
    append_time_ms: i64,
    c: Compression,
) -> BatchHeader {
    if c.codec.is_none() {
        return super::encode(out, base_offset, producer, records, append_time_ms);
    }
    RAW.with_borrow_mut(|raw| {
        let plain = super::encode(raw, base_offset, producer, records, append_time_ms);
        compress_or_keep(out, raw, plain, c)
    })
}

/// [`super::encode_sparse`], compressed with `c` when that shrinks it (version 4 either
/// way; a batch without records is never compressed).
pub fn encode_sparse(
    out: &mut Vec<u8>,
    base_offset: u64,
    offset_span: u32,
    records: &[(u32, Record)],
    append_time_ms: i64,
    c: Compression,
) -> BatchHeader {
    if c.codec.is_none() || records.is_empty() {
        return super::encode_sparse(out, base_offset, offset_span, records, append_time_ms);
    }
    RAW.with_borrow_mut(|raw| {
        let plain = super::encode_sparse(raw, base_offset, offset_span, records, append_time_ms);
        compress_or_keep(out, raw, plain, c)
    })
}

/// `out` set to the plain batch `raw` (header `plain`) compressed, or to `raw` itself when
/// compressing does not pay.
fn compress_or_keep(
    out: &mut Vec<u8>,
    raw: &mut Vec<u8>,
    plain: BatchHeader,
    c: Compression,
) -> BatchHeader {
    match compress_records(out, raw, plain.header_len(), c) {
        Some(uncompressed_len) => seal(out, raw, plain, c.codec, uncompressed_len),
        None => {
            // The plain encoding is the batch; the scratch buffer takes `out`'s.
            std::mem::swap(out, raw);
            plain
        }
    }
}

/// Writes the chunks of the plain batch `raw` (records after `raw_header` bytes) after
/// room for the compressed header (4 bytes more) in `out`; `None` if compressing does not
/// pay (or cannot be framed).
fn compress_records(
    out: &mut Vec<u8>,
    raw: &[u8],
    raw_header: usize,
    c: Compression,
) -> Option<u32> {
    let records = &raw[raw_header..];
    let uncompressed_len = u32::try_from(records.len()).ok()?;
    out.clear();
    out.resize(raw_header + 4, 0);
    let (mut start, mut count, mut pos) = (0usize, 0u32, 0usize);
    while pos < records.len() {
        let mut cur = Cursor { buf: records, pos };
        let len = cur.varint().ok()? as usize;
        let next = cur.pos + len;
        if count > 0 && next - start > CHUNK_TARGET {
            push_chunk(out, &records[start..pos], count, c)?;
            (start, count) = (pos, 0);
        }
        if next - start > MAX_CHUNK_RAW {
            return None;
        }
        count += 1;
        pos = next;
    }
    push_chunk(out, &records[start..], count, c)?;
    (out.len() < raw.len()).then_some(uncompressed_len)
}

fn push_chunk(out: &mut Vec<u8>, raw: &[u8], count: u32, c: Compression) -> Option<()> {
    let frame = out.len();
    let at = frame + FRAME_LEN;
    let stored = match c.codec {
        // Version 2 holds uncompressed records.
        Codec::None => return None,
        Codec::Lz4 => {
            out.resize(at + lz4_flex::block::get_maximum_output_size(raw.len()), 0);
            lz4_flex::block::compress_into(raw, &mut out[at..]).ok()?
        }
        Codec::Zstd => {
            out.resize(at + zstd::zstd_safe::compress_bound(raw.len()), 0);
            ZSTD_IN.with_borrow_mut(|slot| {
                let z = match slot {
                    Some(z) => z,
                    None => slot.insert(zstd::bulk::Compressor::new(c.level).ok()?),
                };
                z.set_compression_level(c.level).ok()?;
                z.compress_to_buffer(raw, &mut out[at..]).ok()
            })?
        }
    };
    out.truncate(at + stored);
    out[frame..frame + 4].copy_from_slice(&u32::try_from(stored).ok()?.to_le_bytes());
    out[frame + 4..frame + 8].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    out[frame + 8..frame + 12].copy_from_slice(&count.to_le_bytes());
    Some(())
}

/// Fills the compressed header of `out` from the plain header of `raw` (a version 2 batch
/// becomes version 3; a sparse one stays version 4) and seals it with the CRC.
fn seal(
    out: &mut [u8],
    raw: &[u8],
    plain: BatchHeader,
    codec: Codec,
    uncompressed_len: u32,
) -> BatchHeader {
    let (raw_header, version) = if plain.is_sparse() {
        (SPARSE_HEADER_LEN, plain.version)
    } else {
        (HEADER_LEN, COMPRESSED_VERSION)
    };
    out[..raw_header].copy_from_slice(&raw[..raw_header]);
    let len = out.len();
    out[8..12].copy_from_slice(&((len - 12) as u32).to_le_bytes());
    out[16] = version;
    let attributes = codec.bits() | (plain.attributes & !super::CODEC_MASK);
    out[21..23].copy_from_slice(&attributes.to_le_bytes());
    out[raw_header..raw_header + 4].copy_from_slice(&uncompressed_len.to_le_bytes());
    let crc = crc32fast::hash(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_le_bytes());
    BatchHeader {
        total_len: len,
        crc,
        attributes,
        version,
        uncompressed_len,
        ..plain
    }
}

/// The chunks of the compressed batch `bytes` (header `h`), their frames checked against
/// each other and the header: counts and raw lengths add up, and they end at the batch's end.
pub(super) fn chunks(h: &BatchHeader, bytes: &[u8]) -> Result<Vec<Chunk>, BatchError> {
    let bad = BatchError::BadRecord;
    let mut out = Vec::new();
    let (mut pos, mut index, mut raw_total) = (h.header_len(), 0u32, 0u64);
    while pos < bytes.len() {
        if bytes.len() - pos < FRAME_LEN {
            return Err(bad("chunk frame runs past the batch"));
        }
        let stored_len = le_u32(bytes, pos) as usize;
        let raw_len = le_u32(bytes, pos + 4) as usize;
        let count = le_u32(bytes, pos + 8);
        let start = pos + FRAME_LEN;
        if stored_len > bytes.len() - start {
            return Err(bad("chunk runs past the batch"));
        }
        if count == 0 || raw_len < count as usize || raw_len > MAX_CHUNK_RAW {
            return Err(bad("chunk claims an impossible size or record count"));
        }
        if u64::from(index) + u64::from(count) > u64::from(h.record_count) {
            return Err(bad("chunks hold more records than the batch"));
        }
        out.push(Chunk {
            first_index: index,
            count,
            stored: start..start + stored_len,
            raw_len,
        });
        index += count;
        raw_total += raw_len as u64;
        pos = start + stored_len;
    }
    if index != h.record_count || raw_total != u64::from(h.uncompressed_len) {
        return Err(bad("chunks disagree with the batch header"));
    }
    Ok(out)
}

/// Inflates `chunk` of the batch `bytes` into memory taken from `budget`.
pub(super) fn inflate(
    h: &BatchHeader,
    bytes: &[u8],
    chunk: &Chunk,
    budget: &Arc<Budget>,
) -> Result<Bytes, BatchError> {
    let held = budget.take(chunk.raw_len)?;
    let mut raw = vec![0u8; chunk.raw_len];
    let src = &bytes[chunk.stored.clone()];
    let got = match h.codec() {
        // `decode_header` refuses a version 3 batch without a codec.
        Codec::None => None,
        Codec::Lz4 => lz4_flex::block::decompress_into(src, &mut raw).ok(),
        Codec::Zstd => ZSTD_OUT.with_borrow_mut(|slot| {
            let z = match slot {
                Some(z) => z,
                None => slot.insert(zstd::bulk::Decompressor::new().ok()?),
            };
            z.decompress_to_buffer(src, &mut raw[..]).ok()
        }),
    };
    if got != Some(chunk.raw_len) {
        return Err(BatchError::BadRecord(
            "chunk does not inflate to the length its frame says",
        ));
    }
    Ok(Bytes::from_owner(Inflated { raw, _held: held }))
}
