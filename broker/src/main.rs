//! `spoold`, the Spool broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use spool_broker::BrokerConfig;

/// The Spool broker: a durable, append-only message broker with a gRPC API.
///
/// Every flag can also be given as a SPOOL_* environment variable or as a key of the TOML
/// file passed with --config (flags win over the environment, which wins over the file).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (same keys as the flags, plus [topic_defaults]).
    #[arg(long, env = "SPOOL_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory [default: ./spool-data].
    #[arg(long, env = "SPOOL_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7450].
    #[arg(long, env = "SPOOL_LISTEN")]
    listen: Option<SocketAddr>,
    /// Prometheus metrics listen address [default: 127.0.0.1:7451].
    #[arg(long, env = "SPOOL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Largest gRPC request in bytes [default: 67108864].
    #[arg(long, env = "SPOOL_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// How often retention runs, in milliseconds [default: 60000].
    #[arg(long, env = "SPOOL_RETENTION_CHECK_MS")]
    retention_check_ms: Option<u64>,
    /// How often the compactor looks at compacted topics, in milliseconds [default: 15000].
    #[arg(long, env = "SPOOL_COMPACTION_CHECK_MS")]
    compaction_check_ms: Option<u64>,
    /// Compact a partition once a dirty closed segment is this old, in milliseconds, even
    /// below the dirty share [default: 3600000, 1 hour].
    #[arg(long, env = "SPOOL_COMPACTION_MAX_LAG_MS")]
    compaction_max_lag_ms: Option<u64>,
    /// Bytes per second a compaction pass reads and writes at most; 0 = unthrottled
    /// [default: 67108864, 64 MiB/s].
    #[arg(long, env = "SPOOL_COMPACTION_BYTES_PER_SEC")]
    compaction_bytes_per_sec: Option<u64>,
    /// How long a group without members keeps its committed offsets after its last commit,
    /// in milliseconds [default: 604800000, 7 days].
    #[arg(long, env = "SPOOL_OFFSETS_RETENTION_MS")]
    offsets_retention_ms: Option<u64>,
    /// Memory the deferred sets of all queues (records with far-off delivery times, their
    /// timers on disk) may use, in bytes [default: 67108864, 64 MiB].
    #[arg(long, env = "SPOOL_QUEUE_DELAY_MEMORY_BYTES")]
    queue_delay_memory_bytes: Option<u64>,
    /// How long a partition remembers an idempotent producer after its last append, in
    /// milliseconds; 0 = until a cap evicts it [default: 604800000, 7 days].
    #[arg(long, env = "SPOOL_PRODUCER_ID_EXPIRATION_MS")]
    producer_id_expiration_ms: Option<u64>,
    /// Most idempotent producers one partition remembers [default: 10000].
    #[arg(long, env = "SPOOL_MAX_PRODUCERS_PER_PARTITION")]
    max_producers_per_partition: Option<usize>,
    /// Most idempotent producers all partitions remember together [default: 1000000].
    #[arg(long, env = "SPOOL_MAX_PRODUCERS")]
    max_producers: Option<usize>,
    /// Default fsync policy of new topics: always, interval or never [default: always].
    #[arg(long, env = "SPOOL_FSYNC")]
    fsync: Option<String>,
    /// PEM certificate chain of the gRPC port; turns TLS on (with --tls-key).
    #[arg(long, env = "SPOOL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SPOOL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates are verified (mutual TLS).
    #[arg(long, env = "SPOOL_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --tls-client-ca.
    #[arg(long, env = "SPOOL_TLS_REQUIRE_CLIENT_CERT")]
    tls_require_client_cert: bool,
    /// A name the console's requests may carry in `Host` besides loopback and the admin
    /// listener's address (repeat for several; a guard against DNS rebinding).
    #[arg(
        long = "console-host",
        env = "SPOOL_CONSOLE_HOSTS",
        value_delimiter = ','
    )]
    console_hosts: Vec<String>,
    /// Let the console and the JSON API produce and redrive with auth off (with auth on,
    /// tokens and ACLs decide).
    #[arg(long, env = "SPOOL_CONSOLE_WRITES")]
    console_writes: bool,
    /// How often the console's charts are sampled, in milliseconds [default: 10000].
    #[arg(long, env = "SPOOL_CONSOLE_SAMPLE_MS")]
    console_sample_ms: Option<u64>,
    /// Serve /metrics only to callers with `describe` on `cluster` (auth must be on;
    /// Prometheus sends the token with `authorization: { credentials: ... }`).
    #[arg(long, env = "SPOOL_METRICS_AUTH")]
    metrics_auth: bool,
    /// This node's id among --peers (a cluster; without --peers the broker runs alone).
    #[arg(long, env = "SPOOL_NODE_ID")]
    node_id: Option<u32>,
    /// Every node of the cluster, this one included, the same on every node:
    /// 1=host:7450,2=host:7460,3=host:7470 (each node's gRPC address).
    #[arg(long, env = "SPOOL_PEERS")]
    peers: Option<String>,
    /// A follower that hears no leader for this long (randomised up to twice it) starts an
    /// election, in milliseconds [default: 500].
    #[arg(long, env = "SPOOL_ELECTION_TIMEOUT_MS")]
    election_timeout_ms: Option<u64>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Checks every batch of every log in a data directory (CRC, lengths, offsets) and the
    /// topic metadata; lists each damaged range and exits 1 if it finds any. Run it while
    /// the broker is stopped.
    ///
    /// Example: spoold verify --data-dir ./spool-data
    Verify,
    /// Reads a token on stdin and prints the SHA-256 to put in the config's
    /// [[auth.tokens]] sha256 (the broker never stores tokens in plain text).
    ///
    /// Example: head -c 32 /dev/urandom | base64 | tee token.txt | spoold hash-token
    HashToken,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPOOL_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => BrokerConfig::from_file(path).map_err(anyhow::Error::msg)?,
        None => BrokerConfig::default(),
    };
    if let Some(v) = cli.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = cli.listen {
        config.listen = v;
    }
    if let Some(v) = cli.metrics_listen {
        config.metrics_listen = v;
    }
    if let Some(v) = cli.max_request_bytes {
        config.max_request_bytes = v;
    }
    if let Some(v) = cli.retention_check_ms {
        config.retention_check_ms = v;
    }
    if let Some(v) = cli.compaction_check_ms {
        config.compaction_check_ms = v;
    }
    if let Some(v) = cli.compaction_max_lag_ms {
        config.compaction_max_lag_ms = v;
    }
    if let Some(v) = cli.compaction_bytes_per_sec {
        config.compaction_bytes_per_sec = v;
    }
    if let Some(v) = cli.offsets_retention_ms {
        config.offsets_retention_ms = v;
    }
    if let Some(v) = cli.queue_delay_memory_bytes {
        config.queue_delay_memory_bytes = v;
    }
    if let Some(v) = cli.producer_id_expiration_ms {
        config.producer_id_expiration_ms = v;
    }
    if let Some(v) = cli.max_producers_per_partition {
        config.max_producers_per_partition = v;
    }
    if let Some(v) = cli.max_producers {
        config.max_producers = v;
    }
    config.console_hosts.extend(cli.console_hosts);
    config.console_writes |= cli.console_writes;
    if let Some(v) = cli.console_sample_ms {
        config.console_sample_ms = v;
    }
    config.metrics_auth |= cli.metrics_auth;
    if let Some(v) = cli.node_id {
        config.cluster.node_id = v;
    }
    if let Some(v) = cli.peers {
        config.cluster.peers = v;
    }
    if let Some(v) = cli.election_timeout_ms {
        config.cluster.election_timeout_ms = v;
    }
    if let Some(v) = cli.fsync {
        config.topic_defaults.fsync = v;
    }
    if let Some(v) = cli.tls_cert {
        config.tls.cert = Some(v);
    }
    if let Some(v) = cli.tls_key {
        config.tls.key = Some(v);
    }
    if let Some(v) = cli.tls_client_ca {
        config.tls.client_ca = Some(v);
    }
    if cli.tls_require_client_cert {
        config.tls.require_client_cert = true;
    }
    if let Some(Command::HashToken) = cli.command {
        let mut token = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
            .context("reading the token from stdin")?;
        println!("{}", spool_broker::auth::hash_token(token.trim()));
        return Ok(());
    }
    config.validate().map_err(anyhow::Error::msg)?;
    if let Some(Command::Verify) = cli.command {
        let (findings, logs) = spool_broker::verify::verify(&config.data_dir)
            .with_context(|| format!("verifying {}", config.data_dir.display()))?;
        for f in &findings {
            println!("{}: {}", f.path.display(), f.what);
        }
        if findings.is_empty() {
            println!(
                "{}: {logs} logs verified, no damage found",
                config.data_dir.display()
            );
            return Ok(());
        }
        println!(
            "{}: {} problems in {logs} logs",
            config.data_dir.display(),
            findings.len()
        );
        std::process::exit(1);
    }
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Listen for the signals before serving, so a SIGTERM right after start-up is a
        // graceful stop too.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        spool_broker::server::run(config, shutdown)
            .await
            .context("spoold failed")
    })
}

/// Every partition's active segment holds a file descriptor: lift the soft limit on open
/// files to the hard one, so ten thousand partitions fit where the hard limit allows.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
}
