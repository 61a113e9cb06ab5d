//! The metadata group's state machine: the [`Catalog`], applied in log order, persisted
//! with the id of the last entry applied after every batch (temporary file, fsync,
//! rename), so a restart resumes after it and never applies an entry twice, except the
//! one batch a crash interrupted, whose local effects are idempotent
//! ([`Effects::apply`]). A snapshot is the same file's contents.

// openraft's traits fix the error types (StorageError, RPCError), large as they are.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError,
    StoredMembership,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Meta;
use crate::cluster::Effects;
use crate::cluster::catalog::{Catalog, Outcome};

/// What is persisted, and what a snapshot carries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub catalog: Catalog,
    pub last: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, openraft::BasicNode>,
}

/// The state machine's state, shared with the readers of the catalog.
pub struct Shared {
    pub applied: RwLock<Applied>,
    /// The index of the last entry applied, for a node waiting to read its own write.
    pub applied_index: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct Machine {
    pub shared: Arc<Shared>,
    path: PathBuf,
    nodes: Arc<Vec<u32>>,
    effects: Arc<dyn Effects>,
    /// Told the cluster's id once it is applied: messages carry it from then on.
    peers: super::network::Peers,
}

fn write_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

impl Machine {
    /// Opens the persisted state at `path` (blocking).
    pub fn open(
        path: PathBuf,
        nodes: Vec<u32>,
        effects: Arc<dyn Effects>,
        peers: super::network::Peers,
    ) -> crate::error::Result<Machine> {
        let applied: Applied = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                crate::error::Error::invalid(format!(
                    "{} is damaged ({e}); remove the node's data directory to rejoin as a fresh replica",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied::default(),
            Err(e) => return Err(crate::error::Error::io("read", &path, e)),
        };
        let index = applied.last.map_or(0, |l| l.index);
        Ok(Machine {
            shared: Arc::new(Shared {
                applied: RwLock::new(applied),
                applied_index: watch::Sender::new(index),
            }),
            path,
            nodes: Arc::new(nodes),
            effects,
            peers,
        })
    }

    fn snapshot_of(applied: &Applied) -> Result<Snapshot<Meta>, StorageError<u64>> {
        let bytes = serde_json::to_vec(applied).map_err(write_err)?;
        let id = applied.last.map_or_else(
            || "0-0".to_string(),
            |l| format!("{}-{}", l.leader_id, l.index),
        );
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: applied.last,
                last_membership: applied.membership.clone(),
                snapshot_id: id,
            },
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    async fn persist(&self, applied: Applied) -> Result<(), StorageError<u64>> {
        let path = self.path.clone();
        let index = applied.last.map_or(0, |l| l.index);
        tokio::task::spawn_blocking(move || -> Result<(), StorageError<u64>> {
            let bytes = serde_json::to_vec(&applied).map_err(write_err)?;
            crate::registry::write_atomically(&path, &bytes).map_err(write_err)
        })
        .await
        .map_err(write_err)??;
        self.shared.applied_index.send_replace(index);
        Ok(())
    }
}

impl RaftSnapshotBuilder<Meta> for Machine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Meta>, StorageError<u64>> {
        Self::snapshot_of(&self.shared.applied.read())
    }
}

impl RaftStateMachine<Meta> for Machine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        StorageError<u64>,
    > {
        let a = self.shared.applied.read();
        Ok((a.last, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Meta>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut next = self.shared.applied.read().clone();
        let mut outcomes = Vec::new();
        for entry in entries {
            next.last = Some(*entry.get_log_id());
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), m);
                    Outcome::Done
                }
                EntryPayload::Normal(command) => {
                    let outcome = next.catalog.apply(&command, &self.nodes);
                    if outcome == Outcome::Done {
                        let effects = Arc::clone(&self.effects);
                        let catalog = next.catalog.clone();
                        tokio::task::spawn_blocking(move || effects.apply(&command, &catalog))
                            .await
                            .map_err(write_err)?
                            .map_err(|e| {
                                StorageIOError::apply(
                                    entry.log_id,
                                    &std::io::Error::other(e.to_string()),
                                )
                            })?;
                    }
                    outcome
                }
            };
            outcomes.push(outcome);
        }
        self.persist(next.clone()).await?;
        if let Some(id) = next.catalog.cluster_id()
            && self.peers.cluster_id() != id
        {
            self.peers.set_cluster_id(id);
        }
        *self.shared.applied.write() = next;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let mut applied: Applied = serde_json::from_slice(snapshot.get_ref()).map_err(write_err)?;
        applied.last = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let effects = Arc::clone(&self.effects);
        let catalog = applied.catalog.clone();
        tokio::task::spawn_blocking(move || effects.reconcile(&catalog))
            .await
            .map_err(write_err)?
            .map_err(write_err)?;
        self.persist(applied.clone()).await?;
        *self.shared.applied.write() = applied;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Meta>>, StorageError<u64>> {
        let a = self.shared.applied.read();
        if a.last.is_none() {
            return Ok(None);
        }
        Self::snapshot_of(&a).map(Some)
    }
}
