//! Consume, ListGroups, DescribeGroup.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;

use spool_proto::v1::*;
use tonic::{Status, Streaming};

use super::Inner;
use super::offsets::partition_offsets;
use crate::auth::Principal;
use crate::error::Result;
use crate::registry::validate_name;

pub async fn consume(
    inner: Arc<Inner>,
    who: Principal,
    requests: Streaming<ConsumeRequest>,
) -> Result<ReceiverStream<Result<ConsumeResponse, Status>>, Status> {
    super::consume::start(inner, who, requests).await
}

pub fn list(inner: &Inner, req: ListGroupsRequest) -> Result<ListGroupsResponse> {
    let mut all = inner.offsets.groups();
    for (group, topic) in inner.groups.memberships() {
        let topics = all.entry(group).or_default();
        if !topics.contains(&topic) {
            topics.push(topic);
            topics.sort();
        }
    }
    let groups = all
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
        None => {
            let mut t = inner
                .offsets
                .groups()
                .remove(&req.group)
                .unwrap_or_default();
            for (g, topic) in inner.groups.memberships() {
                if g == req.group && !t.contains(&topic) {
                    t.push(topic);
                }
            }
            t.sort();
            t
        }
    };
    let mut out = Vec::new();
    for name in topics {
        let Ok(topic) = inner.registry.get(&name) else {
            continue;
        };
        let (generation, members) = inner.groups.describe(&req.group, &name).unwrap_or_default();
        out.push(GroupTopic {
            topic: name,
            generation,
            members: members
                .into_iter()
                .map(|m| GroupMember {
                    member_id: m.member_id,
                    partitions: m.partitions,
                    connected: m.connected,
                    session_timeout_ms: m.session_timeout_ms,
                })
                .collect(),
            partitions: partition_offsets(inner, &req.group, &topic),
        });
    }
    Ok(DescribeGroupResponse {
        group: req.group,
        topics: out,
    })
}
