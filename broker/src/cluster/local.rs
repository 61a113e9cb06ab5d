//! The local side of applied metadata: this node's topics (directories, groups, offsets,
//! queues) follow the catalog. Idempotent, as [`Effects`] requires: a command applied
//! again after a crash finds its work done and does nothing.

use std::sync::Weak;

use super::Effects;
use super::catalog::{Catalog, Command};
use crate::error::{Error, Result};
use crate::service::Inner;
use crate::service::topics;

/// Applies metadata to the broker's own topics.
pub struct LocalTopics {
    pub inner: Weak<Inner>,
}

impl LocalTopics {
    fn inner(&self) -> Result<std::sync::Arc<Inner>> {
        self.inner.upgrade().ok_or(Error::ShuttingDown)
    }
}

impl Effects for LocalTopics {
    fn apply(&self, command: &Command, catalog: &Catalog) -> Result<()> {
        let inner = self.inner()?;
        match command {
            Command::CreateTopic {
                name,
                partitions,
                settings,
                ..
            } => {
                if inner.registry.get(name).is_err() {
                    topics::create_local(&inner, name, *partitions, settings.clone())?;
                }
                Ok(())
            }
            Command::AlterTopic { name, .. } => {
                let Some(entry) = catalog.topics.get(name) else {
                    return Ok(());
                };
                let partitions = entry.replicas.len() as u32;
                topics::alter_local(&inner, name, partitions, entry.settings.clone()).map(drop)
            }
            Command::DeleteTopic { name } => {
                if inner.registry.get(name).is_ok() {
                    topics::delete_local(&inner, name)?;
                }
                Ok(())
            }
            Command::SetClusterId(_) => Ok(()),
        }
    }

    fn reconcile(&self, catalog: &Catalog) -> Result<()> {
        let inner = self.inner()?;
        for t in inner.registry.list() {
            if !catalog.topics.contains_key(&t.name) {
                topics::delete_local(&inner, &t.name)?;
            }
        }
        for (name, entry) in &catalog.topics {
            let partitions = entry.replicas.len() as u32;
            match inner.registry.get(name) {
                Ok(t)
                    if t.partitions.len() as u32 == partitions && t.settings == entry.settings => {}
                Ok(_) => {
                    topics::alter_local(&inner, name, partitions, entry.settings.clone())?;
                }
                Err(_) => {
                    topics::create_local(&inner, name, partitions, entry.settings.clone())?;
                }
            }
        }
        Ok(())
    }
}
