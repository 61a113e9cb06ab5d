//! Where the test crates that run the real `spoold` as a child process find it: beside the
//! test binary, built with cargo first when missing or stale (`cargo test -p spool-client`
//! does not build another package's binaries), so those tests always run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

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
            "{} is missing or stale; running `cargo build -p spool-broker --bin spoold{}`",
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
