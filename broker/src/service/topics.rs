//! CreateTopic, AlterTopic, DeleteTopic, ListTopics, DescribeTopic.
//!
//! Alone, a change applies here at once. In a cluster it is a command of the metadata
//! group: proposed (forwarded to its leader), applied by every node in the same order,
//! and answered once this node has applied it (`cluster::local` runs the `*_local`
//! functions below on each node).

use std::sync::Arc;

use spool_proto::v1::*;

use super::Inner;
use super::convert::topic_info;
use crate::cluster::catalog::{Command, Outcome};
use crate::error::{Error, Result};
use crate::registry::{Topic, TopicSettings, validate_name};

pub async fn create(inner: &Arc<Inner>, req: CreateTopicRequest) -> Result<CreateTopicResponse> {
    validate_name("topic", &req.name)?;
    // Checked before anything is created.
    let replication_factor = inner.cluster.replication_factor(req.replication_factor)?;
    let settings = inner
        .registry
        .settings_for(&req.config.unwrap_or_default())?;
    let topic = if inner.cluster.is_replicated() {
        crate::registry::check_partitions(inner.registry.config(), req.partitions)?;
        let command = Command::CreateTopic {
            name: req.name.clone(),
            partitions: req.partitions,
            replication_factor,
            settings,
        };
        outcome(inner.cluster.propose(command).await?)?;
        inner.registry.get(&req.name)?
    } else {
        let inner2 = Arc::clone(inner);
        tokio::task::spawn_blocking(move || {
            create_local(&inner2, &req.name, req.partitions, settings)
        })
        .await??
    };
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
    let topic = if inner.cluster.is_replicated() {
        crate::registry::check_alter(inner.registry.config(), &current, req.partitions, &settings)?;
        let command = Command::AlterTopic {
            name: req.name.clone(),
            partitions: req.partitions,
            settings,
        };
        outcome(inner.cluster.propose(command).await?)?;
        inner.registry.get(&req.name)?
    } else {
        let inner2 = Arc::clone(inner);
        tokio::task::spawn_blocking(move || {
            alter_local(&inner2, &req.name, req.partitions, settings)
        })
        .await??
    };
    Ok(AlterTopicResponse {
        topic: Some(topic_info(&topic, &inner.cluster)),
    })
}

pub async fn delete(inner: &Arc<Inner>, req: DeleteTopicRequest) -> Result<DeleteTopicResponse> {
    validate_name("topic", &req.name)?;
    if inner.cluster.is_replicated() {
        let command = Command::DeleteTopic {
            name: req.name.clone(),
        };
        outcome(inner.cluster.propose(command).await?)?;
    } else {
        let inner2 = Arc::clone(inner);
        tokio::task::spawn_blocking(move || delete_local(&inner2, &req.name)).await??;
    }
    Ok(DeleteTopicResponse {})
}

/// The error a refused metadata command answers with.
fn outcome(o: Outcome) -> Result<()> {
    match o {
        Outcome::Done => Ok(()),
        Outcome::TopicExists(name) => Err(Error::TopicExists(name)),
        Outcome::TopicNotFound(name) => Err(Error::TopicNotFound(name)),
        Outcome::Invalid(msg) => Err(Error::invalid(msg)),
    }
}

/// Creates a topic on this node (blocking).
pub fn create_local(
    inner: &Inner,
    name: &str,
    partitions: u32,
    settings: TopicSettings,
) -> Result<Arc<Topic>> {
    let topic = inner.registry.create(name, partitions, settings)?;
    tracing::info!(topic = %topic.name, partitions = topic.partitions.len(), "topic created");
    Ok(topic)
}

/// Alters a topic on this node (blocking); groups on it rebalance over its partitions.
pub fn alter_local(
    inner: &Inner,
    name: &str,
    partitions: u32,
    settings: TopicSettings,
) -> Result<Arc<Topic>> {
    let topic = inner.registry.alter(name, partitions, settings)?;
    inner
        .groups
        .topic_altered(&topic.name, topic.partitions.len() as u32);
    tracing::info!(topic = %topic.name, partitions = topic.partitions.len(), "topic altered");
    Ok(topic)
}

/// Deletes a topic on this node with its groups' positions and its queues (blocking).
pub fn delete_local(inner: &Inner, name: &str) -> Result<()> {
    inner.registry.delete(name)?;
    inner.groups.topic_deleted(name);
    // A failed partition of the deleted topic no longer counts against health.
    inner.partition_events.changed();
    inner.offsets.delete_topic(name)?;
    inner.queues.topic_deleted(name)?;
    tracing::info!(topic = %name, "topic deleted");
    Ok(())
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
