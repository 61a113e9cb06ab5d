//! Running the `spool` binary from the CLI tests.

// Each test binary uses a different part of it.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

pub const SPOOL: &str = env!("CARGO_BIN_EXE_spool");

/// A finished `spool` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "spool failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `spool --server <endpoint> args...` with `stdin` as its input, off the async threads
/// (the broker runs on them).
pub async fn spool_in(endpoint: &str, args: &[&str], stdin: Option<Vec<u8>>) -> Run {
    let mut full = vec!["--server".to_string(), endpoint.to_string()];
    full.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || run_blocking(&full, stdin, &[]))
        .await
        .expect("the spool runner does not panic")
}

pub async fn spool(endpoint: &str, args: &[&str]) -> Run {
    spool_in(endpoint, args, None).await
}

pub fn run_blocking(args: &[String], stdin: Option<Vec<u8>>, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(SPOOL);
    cmd.args(args)
        .env_remove("SPOOL_SERVER")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn spool");
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("wait for spool");
    if let Some(w) = writer {
        w.join().expect("stdin writer");
    }
    out.into()
}
