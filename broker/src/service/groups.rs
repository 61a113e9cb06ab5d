//! Consume, ListGroups, DescribeGroup.

use std::sync::Arc;

use spool_proto::v1::*;
use tonic::{Status, Streaming};

use super::Inner;
use super::offsets::partition_offsets;
use crate::error::Result;
use crate::registry::validate_name;

pub async fn consume(
    _inner: Arc<Inner>,
    _requests: Streaming<ConsumeRequest>,
) -> Result<futures::stream::Empty<Result<ConsumeResponse, Status>>, Status> {
    Err(Status::unimplemented(
        "Consume (broker-assigned consumer groups) is not built yet; use Subscribe with CommitOffset",
    ))
}

pub fn list(inner: &Inner, req: ListGroupsRequest) -> Result<ListGroupsResponse> {
    let groups = inner
        .offsets
        .groups()
        .into_iter()
        .filter(|(_, topics)| req.topic.is_empty() || topics.contains(&req.topic))
        .map(|(group, topics)| GroupSummary { group, topics })
        .collect();
    Ok(ListGroupsResponse { groups })
}

pub fn describe(inner: &Inner, req: DescribeGroupRequest) -> Result<DescribeGroupResponse> {
    validate_name("group", &req.group)?;
    let topics: Vec<String> = match &req.topic {
        Some(t) => {
            inner.registry.get(t)?;
            vec![t.clone()]
        }
        None => inner
            .offsets
            .groups()
            .remove(&req.group)
            .unwrap_or_default(),
    };
    let mut out = Vec::new();
    for name in topics {
        let Ok(topic) = inner.registry.get(&name) else {
            continue;
        };
        out.push(GroupTopic {
            topic: name,
            generation: 0,
            members: Vec::new(),
            partitions: partition_offsets(inner, &req.group, &topic),
        });
    }
    Ok(DescribeGroupResponse {
        group: req.group,
        topics: out,
    })
}
