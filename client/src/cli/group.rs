//! `spool group list|describe` and `spool offsets commit|get`.

use clap::{Args, Subcommand};
use spool_client::Client;
use spool_client::v1::{GroupTopic, PartitionOffsets};

use super::output::{self, Table};

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List the consumer groups and the topics each has members or commits on.
    #[command(after_help = "Example:\n  spool group list")]
    List {
        /// Only groups on this topic.
        #[arg(long, short)]
        topic: Option<String>,
    },
    /// Show a group's members, and per partition its owner, committed offset, end and lag.
    #[command(after_help = "\
Example:
  spool group describe billing --topic orders

COMMITTED is the next offset the group will read (- where it never committed);
LAG is END - COMMITTED (or END - START where nothing is committed).")]
    Describe {
        /// The group.
        group: String,
        /// Only this topic (by default every topic the group is on).
        #[arg(long, short)]
        topic: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum OffsetsCommand {
    /// Set a group's committed offset for one partition (e.g. to re-read or to skip).
    #[command(after_help = "\
Example:
  spool offsets commit --group billing --topic orders --partition 0 --offset 1500

The offset is the next one the group will read; it may move backwards.")]
    Commit(CommitArgs),
    /// Show a group's committed offsets and lag on a topic.
    #[command(after_help = "Example:\n  spool offsets get --group billing --topic orders")]
    Get {
        #[arg(long, short)]
        group: String,
        #[arg(long, short)]
        topic: String,
    },
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    #[arg(long, short)]
    group: String,
    #[arg(long, short)]
    topic: String,
    #[arg(long, short)]
    partition: u32,
    /// The next offset the group will read in the partition (at most its end offset).
    #[arg(long, short)]
    offset: u64,
}

pub async fn run_group(client: &Client, cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List { topic } => {
            let groups = client.list_groups(topic.as_deref()).await?;
            let mut t = Table::new(&[("GROUP", false), ("TOPICS", false)]);
            for g in groups {
                t.row(vec![g.group, g.topics.join(",")]);
            }
            print!("{}", t.render());
            Ok(())
        }
        GroupCommand::Describe { group, topic } => {
            let d = client.describe_group(&group, topic.as_deref()).await?;
            if d.topics.is_empty() {
                println!("group {group} has no members and no committed offsets");
            }
            for (i, gt) in d.topics.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", render_group_topic(gt));
            }
            Ok(())
        }
    }
}

fn render_group_topic(gt: &GroupTopic) -> String {
    let total_lag: u64 = gt.partitions.iter().map(|p| p.lag).sum();
    let mut out = format!(
        "topic {} (generation {}, {} member{}, total lag {})\n",
        gt.topic,
        gt.generation,
        gt.members.len(),
        if gt.members.len() == 1 { "" } else { "s" },
        output::count(total_lag)
    );
    if !gt.members.is_empty() {
        let mut members = Table::new(&[
            ("MEMBER", false),
            ("STATE", false),
            ("SESSION", true),
            ("PARTITIONS", false),
        ]);
        for m in &gt.members {
            members.row(vec![
                m.member_id.clone(),
                if m.connected {
                    "connected"
                } else {
                    "disconnected"
                }
                .into(),
                format!("{} ms", m.session_timeout_ms),
                join(&m.partitions),
            ]);
        }
        out.push_str(&members.render());
        out.push('\n');
    }
    let mut parts = Table::new(&[
        ("PARTITION", true),
        ("MEMBER", false),
        ("COMMITTED", true),
        ("END", true),
        ("LAG", true),
    ]);
    for p in &gt.partitions {
        let owner = gt
            .members
            .iter()
            .find(|m| m.partitions.contains(&p.partition))
            .map_or_else(|| "-".to_string(), |m| m.member_id.clone());
        parts.row(vec![
            p.partition.to_string(),
            owner,
            committed(p),
            p.end_offset.to_string(),
            p.lag.to_string(),
        ]);
    }
    out.push_str(&parts.render());
    out
}

fn committed(p: &PartitionOffsets) -> String {
    p.committed
        .map_or_else(|| "-".to_string(), |c| c.to_string())
}

fn join(ps: &[u32]) -> String {
    if ps.is_empty() {
        return "-".into();
    }
    ps.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

pub async fn run_offsets(client: &Client, cmd: OffsetsCommand) -> anyhow::Result<()> {
    match cmd {
        OffsetsCommand::Commit(a) => {
            client
                .commit_offset(&a.group, &a.topic, a.partition, a.offset)
                .await?;
            println!(
                "committed offset {} of {} partition {} for group {}",
                a.offset, a.topic, a.partition, a.group
            );
            Ok(())
        }
        OffsetsCommand::Get { group, topic } => {
            let offsets = client.get_offsets(&group, &topic).await?;
            let mut t = Table::new(&[
                ("PARTITION", true),
                ("COMMITTED", true),
                ("START", true),
                ("END", true),
                ("LAG", true),
            ]);
            for p in &offsets {
                t.row(vec![
                    p.partition.to_string(),
                    committed(p),
                    p.start_offset.to_string(),
                    p.end_offset.to_string(),
                    p.lag.to_string(),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
    }
}
