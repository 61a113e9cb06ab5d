//! The real `spoold` as a child process on a fixed loopback port, so clients built once
//! find it again after every SIGKILL and restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use spool_client::Client;

use super::DEADLINE;

/// Finds `spoold` beside this test binary (`target/<profile>/deps/chaos-…` →
/// `target/<profile>/spoold`), building it with cargo when it is missing or older than
/// the broker's, storage's or proto's sources, so the harness never tests a stale broker.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile_dir.join("spoold");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the client crate is inside the workspace");
    let built = path.metadata().and_then(|m| m.modified()).ok();
    let newest_source = ["broker", "storage", "proto"]
        .iter()
        .filter_map(|c| newest_mtime(&workspace.join(c)))
        .max();
    let fresh = matches!((built, newest_source), (Some(b), Some(s)) if b >= s);
    if !fresh {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(workspace)
            .args(["build", "-p", "spool-broker", "--bin", "spoold"]);
        if release {
            cmd.arg("--release");
        }
        eprintln!(
            "chaos: {} is missing or stale; running `cargo build -p spool-broker --bin spoold{}`",
            path.display(),
            if release { " --release" } else { "" }
        );
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running {cargo}: {e}"));
        assert!(
            status.success() && path.exists(),
            "could not build spoold ({status}); build it first with \
             `cargo build -p spool-broker --bin spoold` (add --release for a release test run)"
        );
    }
    path
}

/// The newest modification time of a file under `dir` (sources only, not `target`).
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let t = if meta.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            newest_mtime(&path)
        } else {
            meta.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

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
