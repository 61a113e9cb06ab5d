//! Broker configuration: command-line flags, `SPOOL_*` environment variables and a TOML
//! file, in that order of precedence, over built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spool_storage::config::MIN_SEGMENT_BYTES;

use crate::auth::AuthConfig;
use crate::cluster::config::ClusterConfig;
use crate::quota::QuotaConfig;

/// TLS on the gRPC port (`[tls]`): PEM files. With `client_ca`, client certificates signed
/// by it are verified (and required when `require_client_cert`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

/// Topic settings used where a topic's own config leaves a field at 0.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// Per-partition retention by size; 0 keeps everything.
    pub retention_bytes: u64,
    /// Retention by age in milliseconds; 0 keeps everything.
    pub retention_ms: u64,
    pub segment_bytes: u64,
    /// `always`, `interval` or `never`.
    pub fsync: String,
    pub fsync_interval_ms: u64,
    pub max_record_bytes: u32,
    /// How batches are stored on disk: `none`, `lz4` or `zstd`.
    pub compression: String,
    /// The codec's level; 0 = its default.
    pub compression_level: i32,
    /// `delete`, `compact` or `compact_delete`.
    pub cleanup_policy: String,
    /// How long compaction keeps a tombstone, in milliseconds.
    pub delete_retention_ms: u64,
    /// The active segment is closed once its first batch is this old, in milliseconds;
    /// 0 = only by size.
    pub segment_ms: u64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            retention_bytes: 0,
            retention_ms: 0,
            segment_bytes: 128 * 1024 * 1024,
            fsync: "always".into(),
            fsync_interval_ms: 1000,
            max_record_bytes: 1024 * 1024,
            compression: "none".into(),
            compression_level: 0,
            cleanup_policy: "delete".into(),
            delete_retention_ms: 24 * 60 * 60 * 1000,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

/// Everything the broker needs to run.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    /// gRPC address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address; bind it to loopback unless the network is trusted.
    pub metrics_listen: SocketAddr,
    /// Largest gRPC request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most partitions a topic may have.
    pub max_partitions: u32,
    /// Default and cap of `max_records` for reads and subscriptions.
    pub default_max_records: u32,
    /// Default and cap of `max_bytes` for reads and subscription batches.
    pub default_max_bytes: u32,
    /// Longest long poll a Read may ask for, in milliseconds.
    pub max_wait_ms: u32,
    /// Responses buffered per Subscribe/Consume stream before HTTP/2 backpressure applies.
    pub stream_buffer: usize,
    /// Largest Subscribe/Consume message, in payload bytes (one record may exceed it).
    pub stream_max_bytes: u32,
    /// Memory all Subscribe streams together may hold in queued messages, in bytes: a
    /// thousand stalled subscribers wait for room instead of growing the heap.
    pub stream_memory_bytes: u64,
    /// How often retention runs, in milliseconds.
    pub retention_check_ms: u64,
    /// How often the compactor looks at compacted topics' partitions, in milliseconds.
    pub compaction_check_ms: u64,
    /// A partition is compacted once this share (percent) of its closed segments' bytes is
    /// dirty (written since its last compaction), or a kept tombstone has expired.
    pub compaction_min_dirty_percent: u32,
    /// A partition is compacted anyway once a dirty closed segment is this old (its newest
    /// batch's append time), in milliseconds, so tombstones and updates of a quiet topic
    /// do not wait for the dirty share to grow.
    pub compaction_max_lag_ms: u64,
    /// Bytes per second one compaction pass reads and writes at most; 0 = unthrottled.
    pub compaction_bytes_per_sec: u64,
    /// Memory a pass's key map may use, in bytes (about 32 a key): more keys are cleaned
    /// over several passes.
    pub compaction_map_bytes: u64,
    /// The committed offsets of a group with no members are deleted this long (in
    /// milliseconds) after its last commit or the last time it had members, whichever is
    /// later, as Kafka's `offsets.retention.minutes` does: invented group names cannot grow
    /// the broker's memory forever.
    pub offsets_retention_ms: u64,
    /// Memory the deferred sets of all queues together may use, in bytes: what millions of
    /// records with far-off delivery times cost while their timers wait on disk. Past it,
    /// delayed records wait in memory, up to each queue's bound, and `DescribeQueue` says so.
    pub queue_delay_memory_bytes: u64,
    /// An idempotent producer is forgotten this many milliseconds after its last append
    /// (by the broker's clock), unless its topic sets `producer_id_expiration_ms`; 0 =
    /// never. As Kafka's `transactional.id.expiration.ms`: invented producer ids cannot grow
    /// every partition's producer table forever.
    pub producer_id_expiration_ms: u64,
    /// The most idempotent producers one partition remembers; the least recently appending
    /// is forgotten first.
    pub max_producers_per_partition: usize,
    /// The most idempotent producers all partitions together remember (each partition keeps
    /// at least its newest). About 300 bytes each.
    pub max_producers: usize,
    /// Most AppendStream requests in flight per stream.
    pub max_in_flight_appends: usize,
    /// Closed segment files mapped at once.
    pub max_mapped_files: usize,
    /// Bytes of inflated compressed chunks all reads hold at once (each chunk about 128 KiB
    /// at most); a read past it returns fewer records or `RESOURCE_EXHAUSTED`.
    pub decompress_budget_bytes: u64,
    pub topic_defaults: TopicDefaults,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    /// Per-principal byte rates (`[[quotas]]`).
    pub quotas: Vec<QuotaConfig>,
    /// Longest a request is delayed by a quota before it is refused, in milliseconds.
    pub quota_max_delay_ms: u64,
    /// Names besides loopback and the admin listener's address that a console request's
    /// `Host` may carry (the name a browser uses for the broker behind a proxy or DNS).
    pub console_hosts: Vec<String>,
    /// Lets the console and the JSON API change state (produce, redrive) with auth off.
    /// With auth on they always may, as the caller's token and ACLs allow.
    pub console_writes: bool,
    /// How often the console's history (append and read totals, group lag) is sampled, in
    /// milliseconds; 90 samples are kept (15 minutes at the default).
    pub console_sample_ms: u64,
    /// `/metrics` answers only a caller whose token (or certificate) has `describe` on
    /// `cluster` (needs auth on). Off: `/metrics` is open, as a scraper on loopback expects.
    pub metrics_auth: bool,
    /// `[cluster]`: this node's id and its peers; none = a single node.
    pub cluster: ClusterConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./spool-data"),
            listen: "127.0.0.1:7450".parse().expect("valid address"),
            metrics_listen: "127.0.0.1:7451".parse().expect("valid address"),
            max_request_bytes: 64 * 1024 * 1024,
            max_partitions: 10_000,
            default_max_records: 1000,
            default_max_bytes: 1024 * 1024,
            max_wait_ms: 30_000,
            stream_buffer: 4,
            stream_max_bytes: 256 * 1024,
            stream_memory_bytes: 64 * 1024 * 1024,
            retention_check_ms: 60_000,
            compaction_check_ms: 15_000,
            compaction_min_dirty_percent: 50,
            compaction_max_lag_ms: 60 * 60 * 1000,
            compaction_bytes_per_sec: 64 * 1024 * 1024,
            compaction_map_bytes: 64 * 1024 * 1024,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            queue_delay_memory_bytes: 64 * 1024 * 1024,
            producer_id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            max_producers_per_partition: 10_000,
            max_producers: 1_000_000,
            max_in_flight_appends: 1024,
            max_mapped_files: 4096,
            decompress_budget_bytes: 256 * 1024 * 1024,
            topic_defaults: TopicDefaults::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            quotas: Vec::new(),
            quota_max_delay_ms: 5000,
            console_hosts: Vec::new(),
            console_writes: false,
            console_sample_ms: 10_000,
            metrics_auth: false,
            cluster: ClusterConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// Reads a TOML file; unknown keys are errors so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<BrokerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Checks values the broker cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        let auth = &self.auth;
        if self.metrics_auth && auth.tokens.is_empty() && !auth.mtls_identity && auth.acl.is_empty()
        {
            return Err(
                "metrics_auth (--metrics-auth) needs auth on: configure [auth] tokens or mtls_identity, or leave /metrics open".into(),
            );
        }
        let d = &self.topic_defaults;
        if !matches!(d.fsync.as_str(), "always" | "interval" | "never") {
            return Err(format!(
                "topic_defaults.fsync must be always, interval or never, not {:?}",
                d.fsync
            ));
        }
        crate::settings::codec_of(&d.compression, d.compression_level)
            .map_err(|e| format!("topic_defaults: {e}"))?;
        if crate::settings::Cleanup::parse(&d.cleanup_policy).is_none() {
            return Err(format!(
                "topic_defaults.cleanup_policy must be delete, compact or compact_delete, not {:?}",
                d.cleanup_policy
            ));
        }
        if self.decompress_budget_bytes < 2 * 1024 * 1024 {
            return Err(
                "decompress_budget_bytes must be at least 2 MiB (a read inflates chunks of about 128 KiB, a single large record's up to its size)".into(),
            );
        }
        if d.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(format!(
                "topic_defaults.segment_bytes must be at least {MIN_SEGMENT_BYTES}"
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("tls.cert and tls.key must be given together".into());
        }
        if (self.tls.client_ca.is_some() || self.tls.require_client_cert) && !self.tls.enabled() {
            return Err(
                "tls.client_ca and tls.require_client_cert need tls.cert and tls.key".into(),
            );
        }
        if self.tls.require_client_cert && self.tls.client_ca.is_none() {
            return Err("tls.require_client_cert needs tls.client_ca".into());
        }
        crate::auth::Auth::new(&self.auth, self.tls.client_ca.is_some())?;
        if self.compaction_min_dirty_percent > 100 {
            return Err("compaction_min_dirty_percent must be 0 to 100".into());
        }
        if self.compaction_map_bytes < 1024 * 1024 {
            return Err("compaction_map_bytes must be at least 1 MiB".into());
        }
        if self.max_request_bytes < 1024 {
            return Err("max_request_bytes must be at least 1024".into());
        }
        if self.max_partitions == 0 || self.stream_buffer == 0 || self.max_in_flight_appends == 0 {
            return Err(
                "max_partitions, stream_buffer and max_in_flight_appends must be at least 1".into(),
            );
        }
        self.cluster.parse_peers()?;
        if self.cluster.enabled()
            && (self.tls.enabled()
                || !self.auth.tokens.is_empty()
                || self.auth.mtls_identity
                || !self.auth.acl.is_empty())
        {
            return Err(
                "--peers with TLS or auth needs nodes to authenticate each other, which this build does not do yet: run the cluster on a trusted network without TLS and auth, or run a single node".into(),
            );
        }
        if self.max_producers_per_partition == 0 || self.max_producers == 0 {
            return Err("max_producers_per_partition and max_producers must be at least 1".into());
        }
        Ok(())
    }

    pub fn compaction_check(&self) -> Duration {
        Duration::from_millis(self.compaction_check_ms.max(100))
    }

    pub fn retention_check(&self) -> Duration {
        Duration::from_millis(self.retention_check_ms.max(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_auth_needs_auth_on() {
        let open = BrokerConfig {
            metrics_auth: true,
            ..BrokerConfig::default()
        };
        assert!(open.validate().unwrap_err().contains("needs auth on"));
        let with_tokens = BrokerConfig {
            metrics_auth: true,
            auth: toml::from_str("tokens = [{ principal = \"p\", sha256 = \"abababababababababababababababababababababababababababababababab\" }]").unwrap(),
            ..BrokerConfig::default()
        };
        assert_eq!(with_tokens.validate(), Ok(()));
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c: BrokerConfig =
            toml::from_str("listen = \"0.0.0.0:9000\"\n[topic_defaults]\nfsync = \"never\"\n")
                .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.topic_defaults.fsync, "never");
        assert_eq!(c.max_request_bytes, 64 * 1024 * 1024);
        assert!(toml::from_str::<BrokerConfig>("lisen = \"x\"").is_err());
        let bad = BrokerConfig {
            topic_defaults: TopicDefaults {
                fsync: "sometimes".into(),
                ..TopicDefaults::default()
            },
            ..BrokerConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
