//! `spoold`: for now it opens and recovers the data directory and reports what it found.
//! Serving the gRPC API comes next; this binary does not pretend to serve anything.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use spool_storage::{LogConfig, Storage, StorageConfig};

#[derive(Parser)]
#[command(version, about = "The Spool broker")]
struct Args {
    /// Data directory.
    #[arg(long, env = "SPOOL_DATA_DIR", default_value = "./spool-data")]
    data_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let storage = Storage::open(&args.data_dir, StorageConfig::default())
        .with_context(|| format!("opening data directory {}", args.data_dir.display()))?;
    let topics = args.data_dir.join("topics");
    let mut logs = 0;
    if let Ok(entries) = std::fs::read_dir(&topics) {
        for topic in entries.flatten() {
            for part in std::fs::read_dir(topic.path())?.flatten() {
                let name = format!(
                    "topics/{}/{}",
                    topic.file_name().to_string_lossy(),
                    part.file_name().to_string_lossy()
                );
                let log = storage.open_log(&name, LogConfig::default())?;
                let r = log.open_report();
                tracing::info!(log = %name, start = r.start_offset, end = r.end_offset, segments = r.segments, dropped_bytes = r.dropped_bytes, "recovered");
                logs += 1;
            }
        }
    }
    tracing::info!(data_dir = %args.data_dir.display(), logs, "data directory recovered; the gRPC server is not built yet");
    Ok(())
}
