//! `spool topic create|list|describe|delete`.

use clap::{Args, Subcommand, ValueEnum};
use spool_client::Client;
use spool_client::v1::{CleanupPolicy, Compression, FsyncPolicy, TopicConfig, TopicInfo};

use super::output::{self, Table};

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic with a fixed number of partitions.
    #[command(after_help = "\
Example:
  spool topic create orders --partitions 6 --retention-ms 604800000 --fsync interval

Options left out take the broker's defaults.")]
    Create(CreateArgs),
    /// Change a live topic's settings or add partitions; what is left out stays.
    #[command(after_help = "\
Examples:
  spool topic alter orders --retention-ms 604800000 --partitions 12
  spool topic alter orders --compression zstd --compression-level 6
  spool topic alter orders --reset retention_ms --reset compression

--reset takes TopicConfig field names (retention_bytes, retention_ms, segment_bytes,
fsync, fsync_interval_ms, max_record_bytes, producer_id_expiration_ms, compression,
compression_level, cleanup_policy, delete_retention_ms, segment_ms) and sets them to the broker's default in force now.")]
    Alter(AlterArgs),
    /// List every topic with its partitions, record count, size and fsync policy.
    #[command(after_help = "Example:\n  spool topic list")]
    List,
    /// Show a topic's configuration and each partition's offsets and size.
    #[command(after_help = "Example:\n  spool topic describe orders")]
    Describe {
        /// The topic.
        name: String,
    },
    /// Delete a topic, its records and the groups' committed offsets on it.
    #[command(after_help = "Example:\n  spool topic delete orders")]
    Delete {
        /// The topic.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The topic's name: 1 to 249 characters from [A-Za-z0-9._-].
    name: String,
    /// Number of partitions (1 to 10,000); `spool topic alter` can add more later.
    #[arg(long, short)]
    partitions: u32,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args, Debug)]
pub struct AlterArgs {
    /// The topic.
    name: String,
    /// The new partition count (more than now; records stay where they are).
    #[arg(long, short)]
    partitions: Option<u32>,
    /// A setting, by its TopicConfig field name, to set to the broker's default.
    #[arg(long, value_name = "FIELD")]
    reset: Vec<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// A topic's settings as flags: one left out keeps its default (on create) or its value
/// (on alter).
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Most bytes one partition keeps; the oldest segments go first.
    #[arg(long, value_name = "BYTES")]
    retention_bytes: Option<u64>,
    /// Remove a segment once its newest batch was appended longer ago than this (broker
    /// clock), in milliseconds.
    #[arg(long, value_name = "MS")]
    retention_ms: Option<u64>,
    /// Size at which a partition rolls to a new segment file (at least 64 KiB).
    #[arg(long, value_name = "BYTES")]
    segment_bytes: Option<u64>,
    /// When appends reach the disk.
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// With --fsync interval: time between fsyncs, in milliseconds.
    #[arg(long, value_name = "MS")]
    fsync_interval_ms: Option<u64>,
    /// Largest record accepted (key, value and headers together), in bytes.
    #[arg(long, value_name = "BYTES")]
    max_record_bytes: Option<u32>,
    /// Forget an idempotent producer after this long without appends, in milliseconds.
    #[arg(long, value_name = "MS")]
    producer_id_expiration_ms: Option<u64>,
    /// How batches are stored on disk (readers get plain records either way).
    #[arg(long, value_enum)]
    compression: Option<Codec>,
    /// The codec's level: zstd -7 (fastest) to 22 (smallest); 0 = its default.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    compression_level: Option<i32>,
    /// What the topic removes: old segments (delete), superseded values per key (compact),
    /// or both.
    #[arg(long, value_enum)]
    cleanup_policy: Option<Cleanup>,
    /// On a compacted topic, how long a tombstone is kept, in milliseconds.
    #[arg(long, value_name = "MS")]
    delete_retention_ms: Option<u64>,
    /// Close the active segment once its first record is this old, in milliseconds.
    #[arg(long, value_name = "MS")]
    segment_ms: Option<u64>,
}

impl ConfigArgs {
    fn to_proto(&self) -> TopicConfig {
        let fsync = match self.fsync {
            None => FsyncPolicy::Unspecified,
            Some(Fsync::Always) => FsyncPolicy::Always,
            Some(Fsync::Interval) => FsyncPolicy::Interval,
            Some(Fsync::Never) => FsyncPolicy::Never,
        };
        let compression = match self.compression {
            None => Compression::Unspecified,
            Some(Codec::None) => Compression::None,
            Some(Codec::Lz4) => Compression::Lz4,
            Some(Codec::Zstd) => Compression::Zstd,
        };
        let cleanup_policy = match self.cleanup_policy {
            None => CleanupPolicy::Unspecified,
            Some(Cleanup::Delete) => CleanupPolicy::Delete,
            Some(Cleanup::Compact) => CleanupPolicy::Compact,
            Some(Cleanup::CompactDelete) => CleanupPolicy::CompactDelete,
        };
        TopicConfig {
            retention_bytes: self.retention_bytes.unwrap_or(0),
            retention_ms: self.retention_ms.unwrap_or(0),
            segment_bytes: self.segment_bytes.unwrap_or(0),
            fsync: fsync as i32,
            fsync_interval_ms: self.fsync_interval_ms.unwrap_or(0),
            max_record_bytes: self.max_record_bytes.unwrap_or(0),
            producer_id_expiration_ms: self.producer_id_expiration_ms.unwrap_or(0),
            compression: compression as i32,
            compression_level: self.compression_level.unwrap_or(0),
            cleanup_policy: cleanup_policy as i32,
            delete_retention_ms: self.delete_retention_ms.unwrap_or(0),
            segment_ms: self.segment_ms.unwrap_or(0),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Cleanup {
    /// Remove whole old segments by retention.
    Delete,
    /// Keep the newest record of each key.
    Compact,
    /// Compact, and remove old segments by retention.
    CompactDelete,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Codec {
    /// Stored as appended.
    None,
    /// Fast, a moderate ratio.
    Lz4,
    /// A better ratio for more CPU.
    Zstd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Fsync {
    /// Every append is fsynced before it is acknowledged.
    Always,
    /// Fsync every --fsync-interval-ms; a crash may lose the last interval.
    Interval,
    /// Leave write-back to the operating system.
    Never,
}

pub async fn run(client: &Client, cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create(args) => create(client, args).await,
        TopicCommand::Alter(a) => {
            let config = a.config.to_proto();
            let info = client
                .alter_topic(&a.name, a.partitions.unwrap_or(0), config, a.reset)
                .await?;
            println!(
                "altered topic {}: {} partition{}",
                info.name,
                info.partitions,
                if info.partitions == 1 { "" } else { "s" }
            );
            Ok(())
        }
        TopicCommand::List => list(client).await,
        TopicCommand::Describe { name } => describe(client, &name).await,
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
            Ok(())
        }
    }
}

async fn create(client: &Client, a: CreateArgs) -> anyhow::Result<()> {
    let config = a.config.to_proto();
    let info = client.create_topic(&a.name, a.partitions, config).await?;
    println!(
        "created topic {} with {} partition{}",
        info.name,
        info.partitions,
        if info.partitions == 1 { "" } else { "s" }
    );
    Ok(())
}

async fn list(client: &Client) -> anyhow::Result<()> {
    let topics = client.list_topics().await?;
    let mut t = Table::new(&[
        ("NAME", false),
        ("PARTITIONS", true),
        ("RECORDS", true),
        ("SIZE", true),
        ("FSYNC", false),
    ]);
    for info in &topics {
        let config = info.config.unwrap_or_default();
        t.row(vec![
            info.name.clone(),
            info.partitions.to_string(),
            output::count(records(info)),
            output::bytes(info.partition_info.iter().map(|p| p.size_bytes).sum()),
            output::fsync(config.fsync, config.fsync_interval_ms),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// Records retained: the sum of `end - start` over the partitions.
fn records(info: &TopicInfo) -> u64 {
    info.partition_info
        .iter()
        .map(|p| p.end_offset.saturating_sub(p.start_offset))
        .sum()
}

fn duration_ms(ms: u64) -> String {
    format!(
        "{ms} ({})",
        humantime::format_duration(std::time::Duration::from_millis(ms))
    )
}

async fn describe(client: &Client, name: &str) -> anyhow::Result<()> {
    let info = client.describe_topic(name).await?;
    let c = info.config.unwrap_or_default();
    let mut config = Table::new(&[("SETTING", false), ("VALUE", false)]);
    let rows = [
        ("name", info.name.clone()),
        ("partitions", info.partitions.to_string()),
        ("replication-factor", info.replication_factor.to_string()),
        ("records", output::count(records(&info))),
        (
            "retention-bytes",
            output::limit(c.retention_bytes, output::bytes),
        ),
        ("retention-ms", output::limit(c.retention_ms, duration_ms)),
        ("segment-bytes", output::bytes(c.segment_bytes)),
        ("fsync", output::fsync(c.fsync, c.fsync_interval_ms)),
        (
            "compression",
            output::compression(c.compression, c.compression_level),
        ),
        (
            "max-record-bytes",
            output::limit(u64::from(c.max_record_bytes), output::bytes),
        ),
        (
            "producer-id-expiration-ms",
            output::limit(c.producer_id_expiration_ms, duration_ms),
        ),
        ("cleanup-policy", output::cleanup(c.cleanup_policy)),
        (
            "delete-retention-ms",
            output::limit(c.delete_retention_ms, duration_ms),
        ),
        ("segment-ms", output::limit(c.segment_ms, duration_ms)),
    ];
    for (k, v) in rows {
        config.row(vec![k.to_string(), v]);
    }
    print!("{}", config.render());
    println!();
    // A compacted partition's offsets have gaps: its span is not a record count.
    let compacted = c.cleanup_policy == CleanupPolicy::Compact as i32
        || c.cleanup_policy == CleanupPolicy::CompactDelete as i32;
    let mut columns = vec![
        ("PARTITION", true),
        ("START", true),
        ("END", true),
        (if compacted { "OFFSETS" } else { "RECORDS" }, true),
        ("SIZE", true),
        ("LEADER", true),
        ("REPLICAS", false),
        ("IN-SYNC", false),
    ];
    if compacted {
        columns.push(("DIRTY", true));
    }
    let mut parts = Table::new(&columns);
    for p in &info.partition_info {
        let mut row = vec![
            p.partition.to_string(),
            p.start_offset.to_string(),
            p.end_offset.to_string(),
            output::count(p.end_offset.saturating_sub(p.start_offset)),
            output::bytes(p.size_bytes),
            output::node(p.leader),
            output::nodes(&p.replicas),
            output::nodes(&p.in_sync),
        ];
        if compacted {
            row.push(format!("{:.0}%", p.dirty_ratio * 100.0));
        }
        parts.row(row);
    }
    print!("{}", parts.render());
    Ok(())
}
