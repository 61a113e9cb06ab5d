//! The cluster's metadata: topics, their settings and where their partitions live. The
//! metadata Raft group replicates [`Command`]s; every node applies them in log order to
//! its own [`Catalog`], which decides each outcome, so all nodes agree on it (a second
//! create of one name fails the same way everywhere). The local side effects (topic
//! directories, groups, offsets) follow the catalog, see `cluster::apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::settings::TopicSettings;

/// A change to the metadata, as the metadata leader proposes it: settings arrive resolved
/// (the proposing node's defaults filled in) so every node stores the same ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        settings: TopicSettings,
    },
    AlterTopic {
        name: String,
        /// 0 = unchanged.
        partitions: u32,
        settings: TopicSettings,
    },
    DeleteTopic {
        name: String,
    },
    /// Names the cluster: proposed by its first leader; the first one applied wins, so
    /// every node ends with the same id, which peers' messages must then carry.
    SetClusterId(String),
}

/// What applying a [`Command`] came to, the same on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (the blank entries and membership changes of Raft itself too).
    Done,
    TopicExists(String),
    TopicNotFound(String),
    /// Refused for a reason that holds on every node (e.g. fewer partitions than before).
    Invalid(String),
}

/// A topic as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEntry {
    pub settings: TopicSettings,
    pub replication_factor: u32,
    /// Each partition's replicas, preferred leader first.
    pub replicas: Vec<Vec<u32>>,
}

/// Every topic of the cluster, and the counter that spreads their replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub topics: BTreeMap<String, TopicEntry>,
    /// Partitions placed so far: where the next one's preferred leader goes, so leaders
    /// spread over the nodes across topics, not only within one.
    placed: u64,
    /// "" until the first leader names the cluster.
    #[serde(default)]
    cluster_id: String,
}

impl Catalog {
    /// The cluster's id, once its first leader has named it.
    pub fn cluster_id(&self) -> Option<&str> {
        (!self.cluster_id.is_empty()).then_some(self.cluster_id.as_str())
    }

    /// Applies `command` over `nodes` (sorted node ids), returning its outcome.
    pub fn apply(&mut self, command: &Command, nodes: &[u32]) -> Outcome {
        match command {
            Command::SetClusterId(id) => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = id.clone();
                }
                Outcome::Done
            }
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                settings,
            } => {
                if self.topics.contains_key(name) {
                    return Outcome::TopicExists(name.clone());
                }
                let rf = (*replication_factor).clamp(1, nodes.len().max(1) as u32);
                let replicas = (0..*partitions).map(|_| self.place(nodes, rf)).collect();
                self.topics.insert(
                    name.clone(),
                    TopicEntry {
                        settings: settings.clone(),
                        replication_factor: rf,
                        replicas,
                    },
                );
                Outcome::Done
            }
            Command::AlterTopic {
                name,
                partitions,
                settings,
            } => {
                let Some(mut entry) = self.topics.remove(name) else {
                    return Outcome::TopicNotFound(name.clone());
                };
                let have = entry.replicas.len() as u32;
                if *partitions != 0 && *partitions < have {
                    self.topics.insert(name.clone(), entry);
                    return Outcome::Invalid(format!(
                        "partitions {partitions} is fewer than the topic's {have}: partitions can only be added"
                    ));
                }
                for _ in have..*partitions {
                    let p = self.place(nodes, entry.replication_factor);
                    entry.replicas.push(p);
                }
                entry.settings = settings.clone();
                self.topics.insert(name.clone(), entry);
                Outcome::Done
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => Outcome::Done,
                None => Outcome::TopicNotFound(name.clone()),
            },
        }
    }

    /// The replicas of the next partition: `rf` consecutive nodes from a rotating start.
    fn place(&mut self, nodes: &[u32], rf: u32) -> Vec<u32> {
        if nodes.is_empty() {
            return Vec::new();
        }
        let start = (self.placed % nodes.len() as u64) as usize;
        self.placed += 1;
        (0..rf as usize)
            .map(|k| nodes[(start + k) % nodes.len()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TopicSettings {
        crate::settings::resolve(&crate::BrokerConfig::default(), &Default::default()).unwrap()
    }

    fn create(name: &str, partitions: u32, rf: u32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            settings: settings(),
        }
    }

    #[test]
    fn leaders_and_replicas_spread_evenly_across_topics() {
        let mut c = Catalog::default();
        let nodes = [1, 2, 3];
        assert_eq!(c.apply(&create("a", 2, 3), &nodes), Outcome::Done);
        assert_eq!(c.apply(&create("b", 4, 2), &nodes), Outcome::Done);
        let mut leading = [0; 3];
        let mut holding = [0; 3];
        for t in c.topics.values() {
            for r in &t.replicas {
                leading[r[0] as usize - 1] += 1;
                for n in r {
                    holding[*n as usize - 1] += 1;
                }
                let mut distinct = r.clone();
                distinct.dedup();
                assert_eq!(distinct.len(), r.len(), "a replica set names a node once");
            }
        }
        assert_eq!(leading, [2, 2, 2]);
        assert_eq!(holding, [5, 4, 5]);
        assert_eq!(c.topics["b"].replicas[0], vec![3, 1]);
    }

    #[test]
    fn outcomes_are_decided_by_the_catalog() {
        let mut c = Catalog::default();
        let nodes = [1, 2, 3];
        assert_eq!(c.apply(&create("a", 1, 3), &nodes), Outcome::Done);
        assert_eq!(
            c.apply(&create("a", 1, 3), &nodes),
            Outcome::TopicExists("a".into())
        );
        let shrink = Command::AlterTopic {
            name: "a".into(),
            partitions: 0,
            settings: settings(),
        };
        assert_eq!(c.apply(&shrink, &nodes), Outcome::Done);
        let grow = Command::AlterTopic {
            name: "a".into(),
            partitions: 3,
            settings: settings(),
        };
        assert_eq!(c.apply(&grow, &nodes), Outcome::Done);
        assert_eq!(c.topics["a"].replicas.len(), 3);
        let fewer = Command::AlterTopic {
            name: "a".into(),
            partitions: 2,
            settings: settings(),
        };
        assert!(
            matches!(c.apply(&fewer, &nodes), Outcome::Invalid(m) if m.contains("only be added"))
        );
        let delete = Command::DeleteTopic { name: "a".into() };
        assert_eq!(c.apply(&delete, &nodes), Outcome::Done);
        assert_eq!(c.apply(&delete, &nodes), Outcome::TopicNotFound("a".into()));
    }
}
