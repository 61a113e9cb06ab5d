//! Maintenance: retention by size and age, truncation of a suffix (for a replication layer
//! that must drop records a new leader does not have), and `verify`, the full integrity scan.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::disk;
use crate::error::{Error, Result};
use crate::segment::{self, ActiveIndex, Probe, Segment};

use super::{Damage, Log, Writer, rewrite, sync_dir};

impl Log {
    /// Deletes whole closed segments that retention no longer keeps: the oldest while the
    /// log would still hold `retention_bytes` without them, and those whose newest batch was
    /// appended longer than `retention` before `now_ms` (by the broker's clock: a record
    /// stamped in the future by its client keeps nothing). Returns the number of segments
    /// deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        let config = self.config();
        if config.retention_bytes.is_none() && config.retention.is_none() {
            return Ok(0);
        }
        // Which segments go is decided without the writer lock (a closed segment's size and
        // newest append time never change, and reading the latter may map its index).
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let mut remaining: u64 = segs.iter().map(|s| s.len()).sum();
        let mut doomed = Vec::new();
        for s in &segs[..segs.len() - 1] {
            let by_bytes = config
                .retention_bytes
                .is_some_and(|max| remaining.saturating_sub(s.len()) >= max);
            let by_age = config.retention.is_some_and(|age| {
                let newest = s.newest_append_time(&self.shared.cache);
                newest != i64::MIN
                    && newest
                        < now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
            });
            if !(by_bytes || by_age) {
                break;
            }
            remaining -= s.len();
            doomed.push(Arc::clone(s));
        }
        self.remove_oldest(doomed)
    }

    /// Deletes the closed segments that hold only offsets below `offset` (for a log whose
    /// owner has rewritten what it still needs past `offset`, as the broker's offsets log
    /// does when it compacts). Returns the number of segments deleted.
    pub fn remove_before(&self, offset: u64) -> Result<usize> {
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let doomed = segs[..segs.len().saturating_sub(1)]
            .iter()
            .take_while(|s| s.end() <= offset)
            .cloned()
            .collect();
        self.remove_oldest(doomed)
    }

    /// Removes `doomed`, the oldest closed segments in order, from the log and the disk.
    fn remove_oldest(&self, doomed: Vec<Arc<Segment>>) -> Result<usize> {
        let Some(last) = doomed.last() else {
            return Ok(0);
        };
        let new_start = last.end();
        {
            // The writer lock only for detaching them: a truncation or roll since the scan
            // may have changed the map, in which case this round deletes nothing.
            let _w = self.writer.lock();
            let mut map = self.segments.write();
            let unchanged = doomed.iter().all(|s| {
                map.get(&s.base).is_some_and(|m| Arc::ptr_eq(m, s))
                    && map.range(s.base + 1..).next().is_some()
            });
            if !unchanged {
                return Ok(0);
            }
            for s in &doomed {
                map.remove(&s.base);
            }
            self.start.store(new_start, Ordering::Release);
        }
        // Unreachable now (readers holding a view keep their map: unlinked files stay alive),
        // so the unlinks and the directory fsync run without blocking appends.
        for s in &doomed {
            self.delete_segment_files(s)?;
        }
        sync_dir(&self.dir)?;
        tracing::info!(log = %self.name, segments = doomed.len(), start_offset = new_start, "retention deleted segments");
        Ok(doomed.len())
    }

    pub(super) fn delete_segment_files(&self, s: &Segment) -> Result<()> {
        self.shared.cache.forget(s.id);
        for path in [
            s.log_path.clone(),
            s.index_path.clone(),
            s.time_path.clone(),
            self.dir.join(segment::file_name(s.base, "producers")),
        ] {
            match disk::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &path, e)),
            }
        }
        Ok(())
    }

    /// Removes every record at or after `offset`, which must be a batch boundary (a
    /// follower's divergent suffix). Durable on return. Views already handed out keep
    /// the old bytes: the cut segment is rewritten into a new file, never shrunk in place.
    pub fn truncate(&self, offset: u64) -> Result<()> {
        let mut w = self.writer.lock();
        let end = self.end_offset();
        if offset == end {
            return Ok(());
        }
        if offset > end || offset < self.start_offset() {
            return Err(self.out_of_range(offset));
        }
        let mut st = self.sync.lock();
        while st.running {
            self.sync_done.wait(&mut st);
        }
        st.running = true;
        drop(st);
        let result = self.truncate_locked(&mut w, offset);
        // What is appended again below the old checkpoint is dirty.
        self.cleaned_to.fetch_min(offset, Ordering::AcqRel);
        let mut st = self.sync.lock();
        st.running = false;
        self.sync_done.notify_all();
        drop(st);
        result?;
        drop(w);
        self.notify(offset);
        Ok(())
    }

    pub(super) fn truncate_locked(&self, w: &mut Writer, offset: u64) -> Result<()> {
        let seg = self
            .segment_for(offset)
            .ok_or_else(|| self.out_of_range(offset))?;
        let data = seg.data(&self.shared.cache)?;
        let s = seg.locate(&self.shared.cache, &data, offset);
        let (mut pos, mut expected) = (s.pos, s.offset);
        while expected < offset {
            match segment::probe(&data, pos, expected) {
                Probe::Batch(h) if h.next_offset() <= offset => {
                    pos += h.total_len;
                    expected = h.next_offset();
                }
                Probe::Batch(h) => {
                    return Err(Error::NotBatchBoundary {
                        offset,
                        batch_start: h.base_offset,
                        batch_end: h.next_offset(),
                    });
                }
                Probe::Damaged(reason) => {
                    return Err(Error::Corrupt {
                        path: seg.log_path.clone(),
                        position: pos as u64,
                        offsets: None,
                        reason,
                    });
                }
            }
        }
        let later: Vec<Arc<Segment>> = self
            .segments
            .read()
            .range(seg.base + 1..)
            .map(|(_, s)| Arc::clone(s))
            .collect();
        for s in later.iter().rev() {
            self.segments.write().remove(&s.base);
            s.close();
            self.delete_segment_files(s)?;
        }
        // Write the kept prefix into a new file and rename it over the segment.
        let tmp = seg.log_path.with_extension("log.truncate.tmp");
        let kept = &data[..pos];
        let write_tmp = || -> io::Result<File> {
            let f = disk::open(&tmp, true, true)?;
            disk::write_at(&f, &tmp, kept, 0)?;
            disk::sync_data(&f, &tmp)?;
            Ok(f)
        };
        let file = write_tmp().map_err(|e| Error::io("write", &tmp, e))?;
        disk::rename(&tmp, &seg.log_path).map_err(|e| Error::io("rename", &seg.log_path, e))?;
        sync_dir(&self.dir)?;
        let (builder, valid) =
            segment::scan_indexes(kept, seg.base, self.config().index_interval_bytes);
        debug_assert_eq!(valid, pos);
        rewrite(&seg.index_path, &builder.offsets, false)?;
        rewrite(&seg.time_path, &builder.times, false)?;
        let file = Arc::new(file);
        let fresh = Arc::new(Segment::active(
            &self.dir,
            seg.base,
            self.shared.next_id(),
            Arc::clone(&file),
            pos as u64,
            offset,
            builder.max_ts,
            ActiveIndex {
                offsets: builder.offsets.clone(),
                times: builder.times.clone(),
            },
        ));
        seg.close();
        self.shared.cache.forget(seg.id);
        self.segments.write().insert(seg.base, Arc::clone(&fresh));
        *self.sync_file.lock() = (Arc::clone(&file), seg.log_path.clone());
        w.index_file_len = builder.offsets.len() as u64;
        w.time_file_len = builder.times.len() as u64;
        let mut index = builder;
        index.offsets = Vec::new();
        index.times = Vec::new();
        w.segment = fresh;
        w.file = file;
        w.index_persisted_pos = pos as u64;
        w.pos = pos as u64;
        w.reserved = pos as u64;
        w.index = index;
        w.producers.truncate(offset);
        // The segment's snapshot may describe the removed suffix: drop it (recovery then
        // replays the segment's headers).
        let snap = self.dir.join(segment::file_name(seg.base, "producers"));
        if seg.base != offset || w.producers.is_empty() {
            let _ = disk::remove_file(&snap);
        }
        w.snapshot_pos = 0;
        self.end.store(offset, Ordering::Release);
        let durable = self.durable_offset().min(offset);
        self.durable.store(durable, Ordering::Release);
        Ok(())
    }

    /// Checks every batch of every segment (CRC, lengths, offsets) and reports each damaged
    /// range. Reads nothing into the log's state; safe while appends run.
    pub fn verify(&self) -> Result<Vec<Damage>> {
        let end = self.end_offset();
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let mut damage = Vec::new();
        for seg in segs {
            let data = seg.data(&self.shared.cache)?;
            let seg_end = seg.end().min(end);
            let (mut pos, mut expected) = (0usize, seg.base);
            while expected < seg_end {
                let probe = if pos < data.len() {
                    segment::probe(&data, pos, expected)
                } else {
                    Probe::Damaged("segment ends before its last offset".into())
                };
                match probe {
                    Probe::Batch(h) => {
                        // The CRC holds; the records must decode too (compressed chunks
                        // inflate to what their frames say).
                        let batch = crate::batch::Batch {
                            header: h,
                            bytes: data.slice(pos..pos + h.total_len),
                        };
                        if let Err(e) = batch.records() {
                            damage.push(Damage {
                                segment: seg.log_path.clone(),
                                positions: pos as u64..(pos + h.total_len) as u64,
                                offsets: h.base_offset..h.next_offset(),
                                reason: format!("records do not decode: {e}"),
                            });
                        }
                        pos += h.total_len;
                        expected = h.next_offset();
                    }
                    Probe::Damaged(reason) => {
                        let reason = match crate::batch::future_version(
                            &data[pos.min(data.len())..],
                        ) {
                            Some(v) => format!(
                                "a batch in format version {v}, newer than this build reads: verify it with the spoold that wrote it"
                            ),
                            None => reason,
                        };
                        let resume =
                            segment::resync(&data, pos, expected.saturating_add(1), seg_end);
                        let (rpos, rbase) =
                            resume.map_or((data.len(), seg_end), |(p, h)| (p, h.base_offset));
                        damage.push(Damage {
                            segment: seg.log_path.clone(),
                            positions: pos as u64..rpos as u64,
                            offsets: expected..rbase,
                            reason,
                        });
                        pos = rpos;
                        expected = rbase;
                    }
                }
            }
            // Index problems matter only where the log itself is intact: a damaged log
            // explains them, and its own damage is reported above.
            let log_damaged = damage.iter().any(|d| d.segment == seg.log_path);
            if !log_damaged {
                for (path, problem) in seg.check_indexes(&self.shared.cache, &data) {
                    damage.push(Damage {
                        segment: path,
                        positions: 0..0,
                        offsets: seg.base..seg.base,
                        reason: format!(
                            "{problem} (indexes are derived: rebuilt from the log when next used)"
                        ),
                    });
                }
            }
            if !seg.is_active() && data[pos.min(data.len())..].iter().any(|&b| b != 0) {
                damage.push(Damage {
                    segment: seg.log_path.clone(),
                    positions: pos as u64..data.len() as u64,
                    offsets: seg_end..seg_end,
                    reason: "bytes after the segment's last batch".into(),
                });
            }
        }
        Ok(damage)
    }
}
