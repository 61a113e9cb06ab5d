//! Conversions between `spool.v1` messages and storage types.

use spool_proto::v1;
use spool_storage::{Header, Record, StoredRecord};

use crate::error::{Error, Result};
use crate::registry::{Fsync, Topic};

/// The reserved header that stores `Record.deliver_at_ms` (8 bytes, i64 little-endian):
/// returned as the field on reads, never as a header (docs/format.md).
pub const DELIVER_AT_HEADER: &str = "spool-deliver-at-ms";

/// Converts appended records, stamping broker time where `timestamp_ms` is 0 and checking
/// each record against `max_record_bytes`. Keys and values move without copying.
pub fn to_storage(
    records: Vec<v1::Record>,
    max_record_bytes: u32,
    now_ms: i64,
) -> Result<(Vec<Record>, u64)> {
    if records.is_empty() {
        return Err(Error::invalid(
            "records is empty: an append must carry at least one record",
        ));
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let size = r.payload_len();
        if size > max_record_bytes as usize {
            return Err(Error::invalid(format!(
                "record {i} is {size} bytes (key, value and headers); the topic's max_record_bytes is {max_record_bytes}"
            )));
        }
        total += size as u64;
        if r.deliver_at_ms < 0 {
            return Err(Error::invalid(format!(
                "record {i} has deliver_at_ms {}: use 0 (at once) or a time in milliseconds since the Unix epoch",
                r.deliver_at_ms
            )));
        }
        if r.headers.iter().any(|h| h.key == DELIVER_AT_HEADER) {
            return Err(Error::invalid(format!(
                "record {i} has a header named {DELIVER_AT_HEADER:?}, which is reserved: set Record.deliver_at_ms instead"
            )));
        }
        let mut headers: Vec<Header> = r
            .headers
            .into_iter()
            .map(|h| Header {
                key: h.key,
                value: h.value,
            })
            .collect();
        if r.deliver_at_ms > 0 {
            headers.push(Header {
                key: DELIVER_AT_HEADER.to_string(),
                value: bytes::Bytes::copy_from_slice(&r.deliver_at_ms.to_le_bytes()),
            });
        }
        out.push(Record {
            key: r.key,
            value: r.value,
            headers,
            timestamp_ms: if r.timestamp_ms == 0 {
                now_ms
            } else {
                r.timestamp_ms
            },
        });
    }
    Ok((out, total))
}

/// A stored record as a `spool.v1.Record`: zero-copy views of the log.
pub fn to_proto(r: StoredRecord) -> v1::Record {
    let mut deliver_at_ms = 0;
    let headers = r
        .headers
        .into_iter()
        .filter_map(|h| {
            if h.key == DELIVER_AT_HEADER {
                if let Ok(b) = <[u8; 8]>::try_from(h.value.as_ref()) {
                    deliver_at_ms = i64::from_le_bytes(b);
                }
                return None;
            }
            Some(v1::Header {
                key: h.key,
                value: h.value,
            })
        })
        .collect();
    v1::Record {
        key: r.key,
        value: r.value,
        headers,
        timestamp_ms: r.timestamp_ms,
        offset: r.offset,
        deliver_at_ms,
    }
}

/// Converts a batch read and returns its payload size.
pub fn records_to_proto(records: Vec<StoredRecord>) -> (Vec<v1::Record>, u64) {
    let bytes = records.iter().map(|r| r.payload_len() as u64).sum();
    (records.into_iter().map(to_proto).collect(), bytes)
}

pub fn topic_info(t: &Topic, cluster: &crate::cluster::Cluster) -> v1::TopicInfo {
    let s = &t.settings;
    v1::TopicInfo {
        name: t.name.clone(),
        partitions: t.partitions.len() as u32,
        config: Some(v1::TopicConfig {
            retention_bytes: s.retention_bytes,
            retention_ms: s.retention_ms,
            segment_bytes: s.segment_bytes,
            fsync: match s.fsync {
                Fsync::Always => v1::FsyncPolicy::Always,
                Fsync::Interval => v1::FsyncPolicy::Interval,
                Fsync::Never => v1::FsyncPolicy::Never,
            } as i32,
            fsync_interval_ms: s.fsync_interval_ms,
            max_record_bytes: s.max_record_bytes,
            producer_id_expiration_ms: s.producer_id_expiration_ms.unwrap_or_default(),
            compression: s.compression.to_proto() as i32,
            compression_level: s.compression_level,
            cleanup_policy: s.cleanup_policy.to_proto() as i32,
            delete_retention_ms: s.delete_retention_ms.unwrap_or_default(),
            segment_ms: s.segment_ms.unwrap_or_default(),
        }),
        replication_factor: cluster.copies(&t.name),
        partition_info: t
            .partitions
            .iter()
            .map(|p| {
                let place = cluster.placement(&t.name, p.index);
                v1::PartitionInfo {
                    partition: p.index,
                    start_offset: p.log.start_offset(),
                    end_offset: p.log.end_offset(),
                    size_bytes: p.log.size_bytes(),
                    state: match p.failure() {
                        Some(_) => v1::PartitionState::Failed,
                        None => v1::PartitionState::Ok,
                    } as i32,
                    failure: p.failure().unwrap_or_default(),
                    dirty_ratio: if s.cleanup_policy.compacts() {
                        p.log.dirty_ratio()
                    } else {
                        0.0
                    },
                    leader: place.leader,
                    replicas: place.replicas,
                    in_sync: place.in_sync,
                }
            })
            .collect(),
    }
}
