//! An in-process broker on an ephemeral port and a fresh temporary data directory, for
//! examples and tests of crates that talk to a broker.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::BrokerConfig;
use crate::server::{self, Running};

/// A running broker whose data directory is removed when it is dropped.
pub struct TempBroker {
    running: Option<Running>,
    dir: PathBuf,
}

impl TempBroker {
    /// Starts a broker on `127.0.0.1:0` with default settings.
    pub async fn start() -> TempBroker {
        TempBroker::start_with(|_| {}).await
    }

    /// Starts a broker after `configure` adjusted its configuration.
    pub async fn start_with(configure: impl FnOnce(&mut BrokerConfig)) -> TempBroker {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spool-temp-{}-{}-{}",
            std::process::id(),
            crate::now_ms(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut config = BrokerConfig {
            data_dir: dir.clone(),
            listen: "127.0.0.1:0".parse().expect("valid address"),
            metrics_listen: "127.0.0.1:0".parse().expect("valid address"),
            ..BrokerConfig::default()
        };
        configure(&mut config);
        let running = server::start(config)
            .await
            .unwrap_or_else(|e| panic!("starting a temporary broker in {}: {e}", dir.display()));
        TempBroker {
            running: Some(running),
            dir,
        }
    }

    /// The gRPC endpoint, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.running().grpc_addr)
    }

    /// The Prometheus address, e.g. `127.0.0.1:40124` (GET `/metrics`).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        self.running().metrics_addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("running until dropped")
    }

    /// Shuts the broker down gracefully (the data directory stays until drop).
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown().await;
        }
    }
}

impl Drop for TempBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
