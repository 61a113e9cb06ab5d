//! CommitOffset and GetOffsets.

use std::sync::Arc;

use spool_proto::v1::{
    CommitOffsetRequest, CommitOffsetResponse, GetOffsetsRequest, GetOffsetsResponse,
    PartitionOffsets,
};

use super::Inner;
use crate::error::{Error, Result};
use crate::registry::{Topic, validate_name};

/// Longest commit metadata accepted.
pub const MAX_METADATA_BYTES: usize = 4096;

pub async fn commit(inner: &Arc<Inner>, req: CommitOffsetRequest) -> Result<CommitOffsetResponse> {
    validate_name("group", &req.group)?;
    let topic = inner.registry.get(&req.topic)?;
    let partition = topic.partition(req.partition)?;
    let end = partition.log.end_offset();
    if req.offset > end {
        return Err(Error::CommitOutOfRange {
            topic: topic.name.clone(),
            partition: req.partition,
            offset: req.offset,
            end,
        });
    }
    if req.metadata.len() > MAX_METADATA_BYTES {
        return Err(Error::invalid(format!(
            "metadata is {} bytes; the limit is {MAX_METADATA_BYTES}",
            req.metadata.len()
        )));
    }
    let inner2 = Arc::clone(inner);
    tokio::task::spawn_blocking(move || {
        inner2.offsets.commit(
            &req.group,
            &req.topic,
            req.partition,
            req.offset,
            &req.metadata,
        )
    })
    .await??;
    Ok(CommitOffsetResponse {})
}

/// Offsets and lag of `group` for every partition of `topic`.
pub fn partition_offsets(inner: &Inner, group: &str, topic: &Topic) -> Vec<PartitionOffsets> {
    let committed = inner.offsets.get(group, &topic.name);
    topic
        .partitions
        .iter()
        .map(|p| {
            let (start, end) = (p.log.start_offset(), p.log.end_offset());
            let c = committed.get(&p.index).map(|c| c.offset);
            PartitionOffsets {
                partition: p.index,
                committed: c,
                start_offset: start,
                end_offset: end,
                lag: end.saturating_sub(c.unwrap_or(start)),
            }
        })
        .collect()
}

pub fn get(inner: &Inner, req: GetOffsetsRequest) -> Result<GetOffsetsResponse> {
    validate_name("group", &req.group)?;
    let topic = inner.registry.get(&req.topic)?;
    Ok(GetOffsetsResponse {
        partitions: partition_offsets(inner, &req.group, &topic),
    })
}
