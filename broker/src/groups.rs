//! Consumer group coordination: members, assignments, generations.
//!
//! Placeholder until consumer groups land: it knows no members, so `Consume` is refused
//! as unimplemented rather than pretending to work.

/// Group membership state (in memory; committed offsets live in [`crate::offsets`]).
#[derive(Default)]
pub struct Coordinator {}

impl Coordinator {
    /// A topic was deleted: its groups' members lose their partitions.
    pub fn topic_deleted(&self, _topic: &str) {}
}
