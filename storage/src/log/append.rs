//! Appends: the producer check, encoding, the positioned write, publishing to readers, index
//! entries and snapshots, space reservation, and segment rolls. All of it runs under the
//! writer lock; see the module docs of `log` for the lock order.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::batch::{self, ProducerStamp, Record};
use crate::config::{Durability, LogConfig};
use crate::error::{Error, Result};
use crate::producer::{Snapshot, Verdict};
use crate::segment::{self, ActiveIndex, IndexBuilder, Segment};
use crate::{disk, faults};

use super::{
    Appended, Log, SNAPSHOT_INTERVAL_BYTES, Writer, create_segment_files, rewrite, sync_dir,
};

impl Log {
    /// Appends `records` as one batch at the end of the log.
    pub fn append(&self, records: &[Record], producer: ProducerStamp) -> Result<Appended> {
        self.append_inner(None, records, producer, true)
    }

    /// Appends like [`Log::append`] but returns once the batch is written and visible,
    /// without waiting for the durability policy: the caller calls [`Log::sync_to`] for
    /// `base_offset + record_count` when the policy is [`Durability::Always`]. This lets a
    /// pipelined caller keep the order of its writes while their fsyncs overlap.
    pub fn append_unsynced(&self, records: &[Record], producer: ProducerStamp) -> Result<Appended> {
        self.append_inner(None, records, producer, false)
    }

    /// Appends `records` as one batch that must start at `offset` (a follower's path).
    pub fn append_at(
        &self,
        offset: u64,
        records: &[Record],
        producer: ProducerStamp,
    ) -> Result<Appended> {
        self.append_inner(Some(offset), records, producer, true)
    }

    pub(super) fn append_inner(
        &self,
        at: Option<u64>,
        records: &[Record],
        producer: ProducerStamp,
        sync: bool,
    ) -> Result<Appended> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        self.check_poisoned()?;
        let config = self.config();
        let first_ts = records[0].timestamp_ms;
        let mut size = batch::HEADER_LEN as u64;
        for (i, r) in records.iter().enumerate() {
            let n = batch::record_encoded_len(r, i, first_ts) as u64;
            if n > config.max_record_bytes {
                return Err(Error::RecordTooLarge {
                    size: n,
                    max: config.max_record_bytes,
                });
            }
            size += n;
        }
        if size > config.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                size,
                max: config.max_batch_bytes,
            });
        }
        let append_ms = super::producers::wall_clock_ms();
        // Compression is CPU work: done before the writer lock, at offset 0 (the base
        // offset lies outside the CRC and is set under the lock).
        let compressed = (!config.compression.codec.is_none()).then(|| {
            let mut buf = Vec::new();
            let h = batch::encode_compressed(
                &mut buf,
                0,
                producer,
                records,
                append_ms,
                config.compression,
            );
            (buf, h)
        });
        let mut w = self.writer.lock();
        let end = self.end.load(Ordering::Acquire);
        if end.checked_add(records.len() as u64).is_none() {
            return Err(Error::LogFull { end });
        }
        if let Some(at) = at
            && at != end
        {
            return Err(Error::OffsetMismatch {
                expected: end,
                got: at,
            });
        }
        let appended = match w.producers.check(producer)? {
            Verdict::Duplicate {
                base_offset,
                record_count,
            } => {
                drop(w);
                Appended {
                    base_offset,
                    record_count,
                    duplicate: true,
                    fsynced: false,
                }
            }
            Verdict::Append => {
                let header = match compressed {
                    Some((mut buf, h)) => {
                        batch::set_base_offset(&mut buf, end);
                        let h = batch::BatchHeader {
                            base_offset: end,
                            ..h
                        };
                        self.write_batch(&mut w, &buf, &h)?;
                        h
                    }
                    None => {
                        let mut buf = std::mem::take(&mut w.scratch);
                        let h = batch::encode(&mut buf, end, producer, records, append_ms);
                        let written = self.write_batch(&mut w, &buf, &h);
                        w.scratch = buf;
                        written?;
                        h
                    }
                };
                w.producers.observe(&header);
                if producer.producer_id != 0 {
                    self.bound_producers(&mut w, append_ms);
                }
                drop(w);
                self.notify(header.next_offset());
                Appended {
                    base_offset: end,
                    record_count: header.record_count,
                    duplicate: false,
                    fsynced: false,
                }
            }
        };
        let fsynced = match config.durability {
            Durability::Always if sync => {
                self.sync_to(appended.base_offset + u64::from(appended.record_count))?;
                true
            }
            _ => self.durable_offset() >= appended.base_offset + u64::from(appended.record_count),
        };
        Ok(Appended {
            fsynced,
            ..appended
        })
    }

    pub(super) fn write_batch(
        &self,
        w: &mut Writer,
        buf: &[u8],
        h: &batch::BatchHeader,
    ) -> Result<()> {
        let config = self.config();
        let len = buf.len() as u64;
        let rel_fits = u32::try_from(h.next_offset() - w.segment.base).is_ok();
        if w.pos > 0
            && (w.pos + len > config.segment_bytes
                || !rel_fits
                || self.aged(w, &config, h.append_time_ms))
        {
            self.roll(w)?;
        }
        self.reserve(w, w.pos + len)?;
        let seg = Arc::clone(&w.segment);
        faults::check(faults::Op::Write, &seg.log_path)
            .and_then(|()| disk::write_at(&w.file, &seg.log_path, buf, w.pos))
            .map_err(|e| Error::io("write", &seg.log_path, e))?;
        let pos = w.pos;
        if pos == 0 {
            w.first_append_ms = Some(h.append_time_ms);
        }
        w.pos += len;
        let (offset_entry, time_entry) = w.index.observe(pos, (h.base_offset - seg.base) as u32, h);
        seg.publish(w.pos, h.next_offset(), h);
        seg.push_index(offset_entry, time_entry);
        if w.pos - w.index_persisted_pos >= config.index_persist_bytes {
            self.persist_index(w);
        }
        self.end.store(h.next_offset(), Ordering::Release);
        if w.pos - w.snapshot_pos >= SNAPSHOT_INTERVAL_BYTES {
            self.write_snapshot(w, h.next_offset());
        }
        Ok(())
    }

    /// Saves the segment's state at the writer's position (not fsync'd: derived data that
    /// only shortens recovery).
    pub(super) fn write_snapshot(&self, w: &mut Writer, next_offset: u64) {
        let snap = Snapshot {
            position: w.pos,
            next_offset,
            max_ts: w.index.max_ts,
            max_rel: w.index.max_rel,
            producers: w.producers.clone(),
        };
        let path = self
            .dir
            .join(segment::file_name(w.segment.base, "producers"));
        let tmp = path.with_extension("producers.tmp");
        match disk::write_file(&tmp, &snap.encode()).and_then(|_| disk::rename(&tmp, &path)) {
            Ok(()) => w.snapshot_pos = w.pos,
            Err(e) => tracing::warn!(log = %self.name, error = %e, "segment snapshot write failed"),
        }
    }

    /// Appends the index entries gathered since the last call to the index files, opened
    /// just for this so an idle partition holds one descriptor. Indexes are derived data: a
    /// failure here is logged and repaired when the segment closes or the log is recovered.
    pub(super) fn persist_index(&self, w: &mut Writer) {
        let seg = Arc::clone(&w.segment);
        for (bytes, len, path, what) in [
            (
                &mut w.index.offsets,
                &mut w.index_file_len,
                &seg.index_path,
                "offset",
            ),
            (
                &mut w.index.times,
                &mut w.time_file_len,
                &seg.time_path,
                "time",
            ),
        ] {
            if bytes.is_empty() {
                continue;
            }
            let written =
                disk::open(path, true, false).and_then(|f| disk::write_at(&f, path, bytes, *len));
            match written {
                Ok(()) => *len += bytes.len() as u64,
                Err(e) => tracing::warn!(log = %self.name, error = %e, "{what} index write failed"),
            }
            bytes.clear();
        }
        w.index_persisted_pos = w.pos;
    }

    /// Makes sure the file has allocated blocks up to `need`, reserving ahead in steps.
    pub(super) fn reserve(&self, w: &mut Writer, need: u64) -> Result<()> {
        if need <= w.reserved {
            return Ok(());
        }
        // Reserve ahead by a step that starts small and doubles with every reservation, up
        // to `preallocate_bytes`: space reserved ahead stays below what the partition has
        // already written (plus the first step), so an idle partition costs kilobytes while
        // a busy one soon reserves in full steps.
        let config = self.config();
        let ahead = w.reserve_step.min(config.preallocate_bytes);
        w.reserve_step = ahead.saturating_mul(2);
        let step = (w.reserved + ahead).min(config.segment_bytes);
        let target = need.max(step);
        faults::check(faults::Op::Allocate, &w.segment.log_path)
            .and_then(|()| {
                disk::allocate(
                    &w.file,
                    &w.segment.log_path,
                    w.reserved,
                    target - w.reserved,
                )
            })
            .map_err(|e| Error::io("fallocate", &w.segment.log_path, e))?;
        w.reserved = target;
        Ok(())
    }

    /// Closes the active segment and starts a new one at the end offset.
    pub(super) fn roll(&self, w: &mut Writer) -> Result<()> {
        let old = Arc::clone(&w.segment);
        if let Some(e) = w.index.final_time_entry() {
            old.push_index(None, Some(e));
        }
        let always = self.config().durability == Durability::Always;
        // Write the index files whole from memory (repairing any failed append), synced
        // here under `Always` and by the next `sync` otherwise.
        if let Some((offsets, times)) = old.active_index_bytes() {
            rewrite(&old.index_path, &offsets, always)?;
            rewrite(&old.time_path, &times, always)?;
        }
        // Release the reserved tail: no view reaches past `pos`, so no page is pulled from
        // under a reader.
        disk::set_len(&w.file, &old.log_path, w.pos)
            .map_err(|e| Error::io("truncate", &old.log_path, e))?;
        if always {
            self.fsync(&w.file, &old.log_path)?;
        } else {
            // Under `Interval` and `Never` a roll must not stall appends on the disk: the
            // closed files are synced by the next `sync`, before the durable offset moves.
            let mut unsynced = self.unsynced.lock();
            unsynced.extend([
                old.log_path.clone(),
                old.index_path.clone(),
                old.time_path.clone(),
            ]);
        }
        let end = self.end.load(Ordering::Acquire);
        let snapshot = Snapshot {
            position: 0,
            next_offset: end,
            max_ts: i64::MIN,
            max_rel: 0,
            producers: w.producers.clone(),
        };
        let file = create_segment_files(&self.dir, end, &snapshot)?;
        if always {
            sync_dir(&self.dir)?;
        }
        let file = Arc::new(file);
        let seg = Arc::new(Segment::active(
            &self.dir,
            end,
            self.shared.next_id(),
            Arc::clone(&file),
            0,
            end,
            i64::MIN,
            ActiveIndex::default(),
        ));
        self.segments.write().insert(end, Arc::clone(&seg));
        old.close();
        *self.sync_file.lock() = (Arc::clone(&file), seg.log_path.clone());
        if always {
            self.durable.fetch_max(end, Ordering::AcqRel);
        }
        w.segment = seg;
        w.file = file;
        w.index_file_len = 0;
        w.time_file_len = 0;
        w.index_persisted_pos = 0;
        w.pos = 0;
        w.reserved = 0;
        w.snapshot_pos = 0;
        w.first_append_ms = None;
        w.index = IndexBuilder::new(self.config().index_interval_bytes);
        Ok(())
    }

    /// Whether the non-empty active segment has outlived `segment_age` at `now_ms`.
    fn aged(&self, w: &mut Writer, config: &LogConfig, now_ms: i64) -> bool {
        let Some(age) = config.segment_age else {
            return false;
        };
        if w.pos == 0 {
            return false;
        }
        let first = match w.first_append_ms {
            Some(t) => t,
            None => {
                // After a restart: the first batch's append time, read once.
                let t = w
                    .segment
                    .data(&self.shared.cache)
                    .ok()
                    .and_then(|d| batch::decode_header(&d).ok())
                    .map_or(i64::MAX, |h| h.append_time_ms);
                *w.first_append_ms.insert(t)
            }
        };
        let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(first) >= age
    }

    /// Closes the active segment if it holds batches and its first was appended at least
    /// `segment_age` before `now_ms`, so a slowly growing log still ages out and compacts
    /// by whole segments. Returns whether it rolled. Blocks on the disk: not for async
    /// threads.
    pub fn roll_if_aged(&self, now_ms: i64) -> Result<bool> {
        let config = self.config();
        let mut w = self.writer.lock();
        if !self.aged(&mut w, &config, now_ms) {
            return Ok(false);
        }
        self.roll(&mut w)?;
        Ok(true)
    }
}
