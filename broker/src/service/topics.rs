//! CreateTopic, AlterTopic, DeleteTopic, ListTopics, DescribeTopic.

use std::sync::Arc;

use spool_proto::v1::*;

use super::Inner;
use super::convert::topic_info;
use crate::error::Result;
use crate::registry::validate_name;

pub async fn create(inner: &Arc<Inner>, req: CreateTopicRequest) -> Result<CreateTopicResponse> {
    validate_name("topic", &req.name)?;
    // Checked before anything is created; every copy is this node's until replication.
    inner.cluster.replication_factor(req.replication_factor)?;
    let settings = inner
        .registry
        .settings_for(&req.config.unwrap_or_default())?;
    let inner2 = Arc::clone(inner);
    let topic = tokio::task::spawn_blocking(move || {
        inner2.registry.create(&req.name, req.partitions, settings)
    })
    .await??;
    tracing::info!(topic = %topic.name, partitions = topic.partitions.len(), "topic created");
    Ok(CreateTopicResponse {
        topic: Some(topic_info(&topic, &inner.cluster)),
    })
}

pub async fn alter(inner: &Arc<Inner>, req: AlterTopicRequest) -> Result<AlterTopicResponse> {
    validate_name("topic", &req.name)?;
    let current = inner.registry.get(&req.name)?;
    let settings = crate::settings::alter(
        inner.registry.config(),
        &current.settings,
        &req.config.unwrap_or_default(),
        &req.reset,
    )?;
    let inner2 = Arc::clone(inner);
    let topic = tokio::task::spawn_blocking(move || {
        inner2.registry.alter(&req.name, req.partitions, settings)
    })
    .await??;
    // Groups on the topic rebalance over its partitions as they are now.
    inner
        .groups
        .topic_altered(&topic.name, topic.partitions.len() as u32);
    tracing::info!(topic = %topic.name, partitions = topic.partitions.len(), "topic altered");
    Ok(AlterTopicResponse {
        topic: Some(topic_info(&topic, &inner.cluster)),
    })
}

pub async fn delete(inner: &Arc<Inner>, req: DeleteTopicRequest) -> Result<DeleteTopicResponse> {
    validate_name("topic", &req.name)?;
    let inner2 = Arc::clone(inner);
    tokio::task::spawn_blocking(move || -> Result<()> {
        inner2.registry.delete(&req.name)?;
        inner2.groups.topic_deleted(&req.name);
        // A failed partition of the deleted topic no longer counts against health.
        inner2.partition_events.changed();
        inner2.offsets.delete_topic(&req.name)?;
        inner2.queues.topic_deleted(&req.name)?;
        tracing::info!(topic = %req.name, "topic deleted");
        Ok(())
    })
    .await??;
    Ok(DeleteTopicResponse {})
}

pub fn list(inner: &Inner) -> ListTopicsResponse {
    ListTopicsResponse {
        topics: inner
            .registry
            .list()
            .iter()
            .map(|t| topic_info(t, &inner.cluster))
            .collect(),
    }
}

pub fn describe(inner: &Inner, req: DescribeTopicRequest) -> Result<DescribeTopicResponse> {
    validate_name("topic", &req.name)?;
    let topic = inner.registry.get(&req.name)?;
    Ok(DescribeTopicResponse {
        topic: Some(topic_info(&topic, &inner.cluster)),
    })
}
