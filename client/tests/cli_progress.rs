//! The progress bar of long runs: drawn on a terminal's stderr (here a pseudo-terminal made
//! by util-linux `script`) while the records go to a file, and absent otherwise.

mod cli_support;

use cli_support::*;
use spool_broker::testing::TempBroker;

const RECORDS: u64 = 30_000;

fn lines() -> Vec<u8> {
    (0..RECORDS)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_runs_show_progress_on_a_terminal_and_nothing_in_a_pipe() {
    let broker = TempBroker::start().await;
    let ep = broker.endpoint();
    spool(&ep, &["topic", "create", "long", "--partitions", "1"])
        .await
        .ok();
    // Not a terminal: the summary only.
    let produced = spool_in(&ep, &["produce", "long"], Some(lines()))
        .await
        .ok();
    assert!(
        !produced.stderr.contains("records sent"),
        "{}",
        produced.stderr
    );
    let n = RECORDS.to_string();
    let piped = spool(&ep, &["consume", "long", "-n", &n]).await.ok();
    assert_eq!(piped.lines().len(), RECORDS as usize);
    assert!(piped.stderr.is_empty(), "{}", piped.stderr);
    // stderr a terminal, stdout a file: the bar is drawn.
    let dir = tempfile::tempdir().unwrap();
    let (out, typescript) = (dir.path().join("out"), dir.path().join("typescript"));
    let command = format!(
        "{SPOOL} --server {ep} consume long -n {n} > {}",
        out.display()
    );
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-q", "-e", "-c", &command])
            .arg(&typescript)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| (s, std::fs::read(&typescript).unwrap_or_default()))
    })
    .await
    .unwrap()
    .expect("util-linux script runs");
    let (status, terminal) = status;
    assert!(status.success(), "{status}");
    let terminal = String::from_utf8_lossy(&terminal);
    assert!(
        terminal.contains("records read"),
        "terminal showed: {terminal:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        RECORDS as usize,
        "every record went to the file, none to the terminal"
    );
}
