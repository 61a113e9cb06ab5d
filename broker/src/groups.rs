//! Consumer group coordination: members, assignments, generations, hand-over.
//!
//! One [`Coordinator`] holds, per (group, topic), the members, each member's target
//! partitions and, per partition, its *holder*: the member (and stream) allowed to deliver
//! it. A partition moves between members in two steps: a rebalance changes the targets and
//! sends every connected member an [`Command::Assign`]; the old owner stops delivering the
//! partition and [`Coordinator::release`]s it; only then does the new owner get a
//! [`Command::Start`]. So a partition is never delivered by two members at once.
//!
//! A member whose stream drops keeps its holdings for its session timeout, so a reconnect
//! with the same id resumes without a rebalance; when the timeout passes it is removed and
//! its partitions rebalance to the others. Membership lives in memory; committed offsets
//! are durable in [`crate::offsets`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::mailbox::Mailbox;
use parking_lot::Mutex;

/// The fewest commands one member's stream may have waiting before it is ended, a safety
/// net: its [`Mailbox`] coalesces `Assign`s, so it holds at most one `Assign` and one
/// `Start` per partition (the cap is this plus the topic's partitions). A stream ended by
/// it resumes, reconnecting with its member id, without a rebalance.
pub const MAX_PENDING_COMMANDS: usize = 256;

/// What the coordinator tells a member's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The member's partitions from now on; stop delivering any others.
    Assign {
        generation: u64,
        partitions: Vec<u32>,
    },
    /// Start delivering this partition (it is free of any other member).
    Start { partition: u32 },
    /// Another stream joined with this member's id and took over.
    Fenced,
    /// The topic was deleted.
    TopicDeleted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    member: String,
    /// The stream delivering it, or `None` while the member is disconnected.
    conn: Option<u64>,
}

struct Conn {
    id: u64,
    mailbox: Arc<Mailbox>,
}

impl Conn {
    /// Queues `cmd` for the stream (never dropped; see [`Mailbox`]).
    fn tell(&self, cmd: Command) {
        self.mailbox.tell(cmd);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.mailbox.close();
    }
}

struct Member {
    target: BTreeSet<u32>,
    session_timeout: Duration,
    conn: Option<Conn>,
    /// Bumped on every disconnect and reconnect, so a stale expiry timer does nothing.
    epoch: u64,
}

#[derive(Default)]
struct Group {
    generation: u64,
    partitions: u32,
    members: BTreeMap<String, Member>,
    holders: BTreeMap<u32, Holder>,
}

/// A member as `DescribeGroup` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub member_id: String,
    pub partitions: Vec<u32>,
    pub connected: bool,
    pub session_timeout_ms: u32,
}

/// The result of a join.
pub struct Joined {
    pub member_id: String,
    pub conn: u64,
    /// The coordinator's commands; its `overflow` says the stream must end.
    pub commands: Arc<Mailbox>,
}

/// All consumer groups' membership.
#[derive(Default)]
pub struct Coordinator {
    groups: Mutex<HashMap<(String, String), Group>>,
    next_id: AtomicU64,
}

impl Coordinator {
    /// Joins `member_id` (empty = new) to `group` on `topic`, which has `partitions`.
    pub fn join(
        self: &Arc<Self>,
        group: &str,
        topic: &str,
        partitions: u32,
        member_id: &str,
        session_timeout: Duration,
    ) -> Joined {
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let member_id = if member_id.is_empty() {
            format!("{group}-{:x}-{conn_id}", crate::now_ms())
        } else {
            member_id.to_string()
        };
        let mailbox = Arc::new(Mailbox::new(MAX_PENDING_COMMANDS + partitions as usize));
        let mut groups = self.groups.lock();
        let g = groups
            .entry((group.to_string(), topic.to_string()))
            .or_default();
        g.partitions = partitions;
        let conn = Conn {
            id: conn_id,
            mailbox: Arc::clone(&mailbox),
        };
        match g.members.get_mut(&member_id) {
            Some(m) => {
                // A returning member: no rebalance. A stream still open under this id is
                // fenced; its holdings pass to the new stream once it has stopped.
                if let Some(old) = m.conn.take() {
                    old.tell(Command::Fenced);
                }
                m.session_timeout = session_timeout;
                m.epoch += 1;
                conn.tell(Command::Assign {
                    generation: g.generation,
                    partitions: m.target.iter().copied().collect(),
                });
                m.conn = Some(conn);
                dispatch(g);
            }
            None => {
                g.members.insert(
                    member_id.clone(),
                    Member {
                        target: BTreeSet::new(),
                        session_timeout,
                        conn: Some(conn),
                        epoch: 0,
                    },
                );
                rebalance(g);
            }
        }
        tracing::info!(group, topic, member = %member_id, generation = g.generation, "member joined");
        Joined {
            member_id,
            conn: conn_id,
            commands: mailbox,
        }
    }

    /// The stream `conn` of `member` ended (it has stopped delivering). The member keeps
    /// its partitions for its session timeout.
    pub fn leave(self: &Arc<Self>, group: &str, topic: &str, member: &str, conn: u64) {
        let key = (group.to_string(), topic.to_string());
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(&key) else {
            return;
        };
        // The stream has stopped delivering: what it held outside the member's current
        // target (revoked while it was ending) is free now; the rest waits for the member.
        let target = g
            .members
            .get(member)
            .map(|m| m.target.clone())
            .unwrap_or_default();
        g.holders
            .retain(|p, h| !(h.member == member && h.conn == Some(conn) && !target.contains(p)));
        for h in g.holders.values_mut() {
            if h.member == member && h.conn == Some(conn) {
                h.conn = None;
            }
        }
        let Some(m) = g.members.get_mut(member) else {
            dispatch(g);
            return;
        };
        if m.conn.as_ref().is_some_and(|c| c.id == conn) {
            m.conn = None;
            m.epoch += 1;
            let (epoch, timeout) = (m.epoch, m.session_timeout);
            let this = Arc::clone(self);
            let member = member.to_string();
            tracing::info!(group, topic, member = %member, ?timeout, "member disconnected");
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                this.expire(&key, &member, epoch);
            });
        }
        dispatch(g);
    }

    fn expire(&self, key: &(String, String), member: &str, epoch: u64) {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(key) else {
            return;
        };
        let expired = g
            .members
            .get(member)
            .is_some_and(|m| m.conn.is_none() && m.epoch == epoch);
        if !expired {
            return;
        }
        g.members.remove(member);
        g.holders.retain(|_, h| h.member != member);
        tracing::info!(group = %key.0, topic = %key.1, member, "member session expired");
        if g.members.is_empty() {
            groups.remove(key);
        } else {
            rebalance(g);
        }
    }

    /// `member` left the group on purpose (its stream `conn` has stopped delivering):
    /// its partitions rebalance to the others at once.
    pub fn remove(&self, group: &str, topic: &str, member: &str, conn: u64) {
        let key = (group.to_string(), topic.to_string());
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(&key) else {
            return;
        };
        let current = g
            .members
            .get(member)
            .and_then(|m| m.conn.as_ref())
            .is_some_and(|c| c.id == conn);
        if !current {
            return;
        }
        g.members.remove(member);
        g.holders.retain(|_, h| h.member != member);
        tracing::info!(group, topic, member, "member left");
        if g.members.is_empty() {
            groups.remove(&key);
        } else {
            rebalance(g);
        }
    }

    /// `member`'s stream `conn` stopped delivering `partitions` (they were revoked).
    pub fn release(&self, group: &str, topic: &str, member: &str, conn: u64, partitions: &[u32]) {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(&(group.to_string(), topic.to_string())) else {
            return;
        };
        for p in partitions {
            if g.holders
                .get(p)
                .is_some_and(|h| h.member == member && h.conn == Some(conn))
            {
                g.holders.remove(p);
            }
        }
        dispatch(g);
    }

    /// Rebalances every group on `topic` over its partition count now (AlterTopic added
    /// partitions): new partitions go to members from their first offset, as no group has
    /// committed on them.
    pub fn topic_altered(&self, topic: &str, partitions: u32) {
        let mut groups = self.groups.lock();
        for ((_, t), g) in groups.iter_mut() {
            if t == topic && g.partitions != partitions {
                g.partitions = partitions;
                rebalance(g);
            }
        }
    }

    /// Ends every stream on a deleted topic and forgets its groups.
    pub fn topic_deleted(&self, topic: &str) {
        let mut groups = self.groups.lock();
        groups.retain(|(_, t), g| {
            if t != topic {
                return true;
            }
            for m in g.members.values() {
                if let Some(c) = &m.conn {
                    c.tell(Command::TopicDeleted);
                }
            }
            false
        });
    }

    /// Generation and members of `group` on `topic`, if it has members.
    pub fn describe(&self, group: &str, topic: &str) -> Option<(u64, Vec<MemberInfo>)> {
        let groups = self.groups.lock();
        let g = groups.get(&(group.to_string(), topic.to_string()))?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberInfo {
                member_id: id.clone(),
                partitions: m.target.iter().copied().collect(),
                connected: m.conn.is_some(),
                session_timeout_ms: m.session_timeout.as_millis() as u32,
            })
            .collect();
        Some((g.generation, members))
    }

    /// Every (group, topic) with members.
    pub fn memberships(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.groups.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

/// New targets for every member, sticky and balanced; tells every connected member.
fn rebalance(g: &mut Group) {
    g.generation += 1;
    let previous: BTreeMap<String, BTreeSet<u32>> = g
        .members
        .iter()
        .map(|(id, m)| (id.clone(), m.target.clone()))
        .collect();
    let targets = assign(g.partitions, &previous);
    for (id, m) in g.members.iter_mut() {
        m.target = targets.get(id).cloned().unwrap_or_default();
    }
    // Holdings of disconnected members outside their new target are free at once: nobody
    // is delivering them.
    let members = &g.members;
    g.holders.retain(|p, h| {
        h.conn.is_some() || members.get(&h.member).is_some_and(|m| m.target.contains(p))
    });
    for m in g.members.values() {
        if let Some(c) = &m.conn {
            c.tell(Command::Assign {
                generation: g.generation,
                partitions: m.target.iter().copied().collect(),
            });
        }
    }
    dispatch(g);
}

/// Starts every target partition that is free (or held by its own member's dead stream).
fn dispatch(g: &mut Group) {
    for (id, m) in &g.members {
        let Some(c) = &m.conn else { continue };
        for &p in &m.target {
            let grant = match g.holders.get(&p) {
                None => true,
                Some(h) => &h.member == id && h.conn.is_none(),
            };
            if grant {
                g.holders.insert(
                    p,
                    Holder {
                        member: id.clone(),
                        conn: Some(c.id),
                    },
                );
                c.tell(Command::Start { partition: p });
            }
        }
    }
}

/// Balanced (counts differ by at most one), sticky (each member keeps as many of its
/// previous partitions as its share allows) and deterministic (members in id order; the
/// larger shares go to members that held more, ties by id).
pub fn assign(
    partitions: u32,
    previous: &BTreeMap<String, BTreeSet<u32>>,
) -> BTreeMap<String, BTreeSet<u32>> {
    let n = previous.len();
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    if n == 0 {
        return out;
    }
    let base = partitions as usize / n;
    let extra = partitions as usize % n;
    let mut order: Vec<&String> = previous.keys().collect();
    order.sort_by(|a, b| {
        let held = |id: &String| previous[id].iter().filter(|&&p| p < partitions).count();
        held(b).cmp(&held(a)).then(a.cmp(b))
    });
    let share: HashMap<&String, usize> = order
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, base + usize::from(i < extra)))
        .collect();
    let mut taken = BTreeSet::new();
    for (id, prev) in previous {
        let keep: BTreeSet<u32> = prev
            .iter()
            .copied()
            .filter(|&p| p < partitions)
            .take(share[id])
            .collect();
        taken.extend(keep.iter().copied());
        out.insert(id.clone(), keep);
    }
    let mut free = (0..partitions).filter(|p| !taken.contains(p));
    for (id, set) in out.iter_mut() {
        while set.len() < share[id] {
            match free.next() {
                Some(p) => {
                    set.insert(p);
                }
                None => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev(entries: &[(&str, &[u32])]) -> BTreeMap<String, BTreeSet<u32>> {
        entries
            .iter()
            .map(|(id, ps)| (id.to_string(), ps.iter().copied().collect()))
            .collect()
    }

    fn counts(a: &BTreeMap<String, BTreeSet<u32>>) -> Vec<usize> {
        a.values().map(|s| s.len()).collect()
    }

    #[test]
    fn assignment_is_balanced_complete_and_disjoint() {
        for parts in [0u32, 1, 5, 12, 13] {
            for members in 1..6 {
                let p: Vec<(String, &[u32])> =
                    (0..members).map(|i| (format!("m{i}"), &[][..])).collect();
                let p: Vec<(&str, &[u32])> = p.iter().map(|(s, v)| (s.as_str(), *v)).collect();
                let a = assign(parts, &prev(&p));
                let c = counts(&a);
                assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
                let all: BTreeSet<u32> = a.values().flatten().copied().collect();
                assert_eq!(all.len(), parts as usize);
                assert_eq!(c.iter().sum::<usize>(), parts as usize, "disjoint");
            }
        }
    }

    #[test]
    fn assignment_is_sticky_when_a_member_joins_or_leaves() {
        let one = assign(12, &prev(&[("a", &[])]));
        assert_eq!(one["a"].len(), 12);
        let mut two_prev = one.clone();
        two_prev.insert("b".into(), BTreeSet::new());
        let two = assign(12, &two_prev);
        assert_eq!(counts(&two), vec![6, 6]);
        assert!(two["a"].is_subset(&one["a"]), "a only loses partitions");
        let mut three_prev = two.clone();
        three_prev.insert("c".into(), BTreeSet::new());
        let three = assign(12, &three_prev);
        assert_eq!(counts(&three), vec![4, 4, 4]);
        assert!(three["a"].is_subset(&two["a"]) && three["b"].is_subset(&two["b"]));
        // b leaves: a and c keep theirs and split b's.
        let mut back = three.clone();
        back.remove("b");
        let after = assign(12, &back);
        assert!(three["a"].is_subset(&after["a"]) && three["c"].is_subset(&after["c"]));
        assert_eq!(counts(&after), vec![6, 6]);
        assert_eq!(assign(12, &back), after, "deterministic");
    }

    #[test]
    fn extra_members_get_nothing_until_one_leaves() {
        let a = assign(2, &prev(&[("a", &[0]), ("b", &[1]), ("c", &[])]));
        assert_eq!(a["a"], [0].into());
        assert_eq!(a["b"], [1].into());
        assert!(a["c"].is_empty());
    }

    #[tokio::test]
    async fn a_partition_moves_only_after_its_old_owner_releases_it() {
        let c = Arc::new(Coordinator::default());
        let a = c.join("g", "t", 2, "a", Duration::from_secs(10));
        let mut got = Vec::new();
        while let Some(cmd) = a.commands.try_recv() {
            got.push(cmd);
        }
        assert_eq!(
            got,
            vec![
                Command::Assign {
                    generation: 1,
                    partitions: vec![0, 1]
                },
                Command::Start { partition: 0 },
                Command::Start { partition: 1 },
            ]
        );
        let b = c.join("g", "t", 2, "b", Duration::from_secs(10));
        assert_eq!(
            a.commands.try_recv().unwrap(),
            Command::Assign {
                generation: 2,
                partitions: vec![0]
            }
        );
        assert_eq!(
            b.commands.try_recv().unwrap(),
            Command::Assign {
                generation: 2,
                partitions: vec![1]
            }
        );
        assert!(
            b.commands.try_recv().is_none(),
            "b must wait for a to release 1"
        );
        c.release("g", "t", "a", a.conn, &[1]);
        assert_eq!(
            b.commands.try_recv().unwrap(),
            Command::Start { partition: 1 }
        );
    }

    #[tokio::test]
    async fn reconnect_within_timeout_resumes_without_rebalance() {
        let c = Arc::new(Coordinator::default());
        let a = c.join("g", "t", 3, "a", Duration::from_secs(10));
        c.leave("g", "t", "a", a.conn);
        let a2 = c.join("g", "t", 3, "a", Duration::from_secs(10));
        assert_eq!(
            a2.commands.try_recv().unwrap(),
            Command::Assign {
                generation: 1,
                partitions: vec![0, 1, 2]
            }
        );
        assert_eq!(
            a2.commands.try_recv().unwrap(),
            Command::Start { partition: 0 }
        );
    }

    #[tokio::test]
    async fn a_stream_that_never_reads_its_commands_holds_only_the_newest_assign_and_its_starts() {
        let c = Arc::new(Coordinator::default());
        let a = c.join("g", "t", 3, "a", Duration::from_secs(10));
        // Hostile churn: every join and leave rebalances, and each rebalance sends `a` an
        // `Assign` that it never reads.
        for i in 0..4 * MAX_PENDING_COMMANDS {
            let x = c.join("g", "t", 3, &format!("x{i}"), Duration::from_secs(10));
            c.remove("g", "t", &format!("x{i}"), x.conn);
        }
        assert!(!a.commands.overflow.is_cancelled(), "nothing piled up");
        assert!(
            a.commands.len() <= 1 + 3,
            "{} commands queued",
            a.commands.len()
        );
        let mut assigns = 0;
        let mut started = Vec::new();
        while let Some(cmd) = a.commands.try_recv() {
            match cmd {
                Command::Assign { partitions, .. } => {
                    assigns += 1;
                    assert_eq!(partitions, vec![0, 1, 2], "the newest assignment");
                }
                Command::Start { partition } => started.push(partition),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(assigns, 1);
        assert_eq!(started, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_member_of_a_topic_with_more_partitions_than_the_safety_net_gets_every_start() {
        let c = Arc::new(Coordinator::default());
        let partitions = 4 * MAX_PENDING_COMMANDS as u32;
        let a = c.join("g", "t", partitions, "a", Duration::from_secs(10));
        assert!(!a.commands.overflow.is_cancelled());
        let mut started = 0;
        while let Some(cmd) = a.commands.try_recv() {
            started += u32::from(matches!(cmd, Command::Start { .. }));
        }
        assert_eq!(started, partitions);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_member_partitions_move_to_the_others() {
        let c = Arc::new(Coordinator::default());
        let a = c.join("g", "t", 4, "a", Duration::from_millis(500));
        let b = c.join("g", "t", 4, "b", Duration::from_millis(500));
        c.release("g", "t", "a", a.conn, &[2, 3]);
        while b.commands.try_recv().is_some() {}
        c.leave("g", "t", "a", a.conn);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            b.commands.try_recv().unwrap(),
            Command::Assign {
                generation: 3,
                partitions: vec![0, 1, 2, 3]
            }
        );
        let (generation, members) = c.describe("g", "t").unwrap();
        assert_eq!(generation, 3);
        assert_eq!(members.len(), 1);
    }
}
