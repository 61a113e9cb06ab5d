//! The real `spoold` as a child process on a fixed loopback port, so clients built once
//! find it again after every SIGKILL and restart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spool_client::Client;

use super::DEADLINE;

pub use crate::spoold_binary::binary;

/// A free loopback port: bound, then released for `spoold` to take (a race another
/// process could win, rare enough on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A `spoold` process (or none, between a kill and the restart) and its data directory.
pub struct Spoold {
    path: PathBuf,
    data_dir: tempfile::TempDir,
    logs: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: usize,
    /// Start attempts that exited before serving (port or lock still held).
    pub failed_starts: usize,
}

impl Spoold {
    /// Starts `spoold` on a fresh data directory and a fixed port chosen now.
    pub async fn start(path: PathBuf) -> Spoold {
        let mut s = Spoold {
            path,
            data_dir: tempfile::Builder::new()
                .prefix("spool-chaos-")
                .tempdir()
                .expect("a temporary data directory"),
            logs: tempfile::Builder::new()
                .prefix("spool-chaos-logs-")
                .tempdir()
                .expect("a temporary log directory"),
            port: free_port(),
            child: None,
            starts: 0,
            failed_starts: 0,
        };
        s.start_again().await;
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.logs.path().join(format!("spoold-{start}.log"))
    }

    /// The stderr of the latest start, for failure messages.
    pub fn last_log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default()
    }

    /// Starts the process on the same port and data directory and waits until it answers.
    /// A start that exits early (the port or the data directory's lock still held by the
    /// killed process) is retried; one that never serves fails the test.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "spoold is already running");
        let began = Instant::now();
        loop {
            self.starts += 1;
            let log = std::fs::File::create(self.log_path(self.starts)).expect("a log file");
            let mut child = Command::new(&self.path)
                .arg("--data-dir")
                .arg(self.data_dir.path())
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .args(["--metrics-listen", "127.0.0.1:0"])
                .env("SPOOL_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.path.display()));
            loop {
                if let Some(status) = child.try_wait().expect("polling spoold") {
                    self.failed_starts += 1;
                    assert!(
                        began.elapsed() < DEADLINE,
                        "spoold exited with {status} and would not restart:\n{}",
                        self.last_log()
                    );
                    eprintln!(
                        "chaos: spoold exited with {status} on start; retrying:\n{}",
                        self.last_log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                if Client::connect(self.endpoint()).await.is_ok() {
                    self.child = Some(child);
                    return;
                }
                if began.elapsed() > DEADLINE {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "spoold did not serve on {} within {DEADLINE:?}:\n{}",
                        self.endpoint(),
                        self.last_log()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// SIGKILL (`Child::kill` on Unix): no shutdown, no flush; the kernel closes the files
    /// and sockets. Reaped before returning, so the restart cannot race the old process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL spoold");
            child.wait().expect("reaping spoold");
        }
    }
}

impl Drop for Spoold {
    fn drop(&mut self) {
        self.kill();
    }
}
