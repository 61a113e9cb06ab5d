//! `spool queue` and `spool produce --delay` end to end against an in-process broker.

mod cli_support;

use cli_support::*;
use spool_broker::testing::TempBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_work_acks_on_exit_0_retries_failures_and_dead_letters_them() {
    let broker = TempBroker::start().await;
    let ep = broker.endpoint();
    spool(&ep, &["topic", "create", "jobs", "--partitions", "1"])
        .await
        .ok();
    spool_in(
        &ep,
        &["produce", "jobs", "-q"],
        Some(b"ok-1\nfail\nok-2\nok-3\n".to_vec()),
    )
    .await
    .ok();
    let created = spool(
        &ep,
        &[
            "queue",
            "create",
            "jobs",
            "q",
            "--max-deliveries",
            "2",
            "--backoff-min",
            "10ms",
            "--backoff-max",
            "10ms",
        ],
    )
    .await
    .ok();
    assert!(created.stdout.contains("jobs.q.dlq"), "{}", created.stdout);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("seen");
    // Each run appends "<value> <attempt>"; "fail" exits 1.
    let exec = format!(
        r#"v=$(cat); echo "$v $SPOOL_ATTEMPT" >> {}; [ "$v" != fail ]"#,
        log.display()
    );
    // 3 acks and 2 nacks of "fail" (the second dead-letters it).
    spool(
        &ep,
        &[
            "queue",
            "work",
            "jobs",
            "q",
            "--exec",
            &exec,
            "--concurrency",
            "2",
            "-n",
            "5",
        ],
    )
    .await
    .ok();
    let seen = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = seen.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["fail 1", "fail 2", "ok-1 1", "ok-2 1", "ok-3 1"]
    );
    let describe = within_describe(&ep, "dead-lettered 1").await;
    assert!(describe.contains("acked 3"), "{describe}");
    let dlq = spool(&ep, &["consume", "jobs.q.dlq", "-n", "1"]).await.ok();
    assert_eq!(dlq.lines(), vec!["fail"]);
    let list = spool(&ep, &["queue", "list"]).await.ok();
    assert!(
        list.lines()
            .iter()
            .any(|l| l.starts_with("jobs") && l.contains(" q ")),
        "{}",
        list.stdout
    );
    // Redrive: "fail" comes back at its offset, attempts reset; the DLQ keeps its copy.
    let redrive = spool(&ep, &["queue", "redrive", "jobs", "q", "--wait"])
        .await
        .ok();
    assert!(
        redrive
            .stdout
            .contains("redrive done: 1 records available again"),
        "{}",
        redrive.stdout
    );
    let again = spool(
        &ep,
        &[
            "queue", "receive", "jobs", "q", "-n", "10", "--wait", "5s", "--json",
        ],
    )
    .await
    .ok();
    assert_eq!(again.lines().len(), 1, "{}", again.stdout);
    let delivery: serde_json::Value = serde_json::from_str(again.lines()[0]).unwrap();
    assert_eq!(
        (delivery["value"].as_str(), delivery["attempt"].as_u64()),
        (Some("fail"), Some(1)),
        "{delivery}"
    );
    let dlq = spool(&ep, &["consume", "jobs.q.dlq", "-n", "1"]).await.ok();
    assert_eq!(dlq.lines(), vec!["fail"]);
    let nothing = spool(&ep, &["queue", "redrive", "jobs", "q"]).await.ok();
    assert!(
        nothing.stdout.contains("(0 to look at)"),
        "{}",
        nothing.stdout
    );
    spool(&ep, &["queue", "delete", "jobs", "q"]).await.ok();
    let gone = spool(&ep, &["queue", "describe", "jobs", "q"]).await;
    assert_eq!(gone.code, 1, "{}", gone.stderr);
    assert!(gone.stderr.contains("does not exist"), "{}", gone.stderr);
}

/// `spool queue describe` until its output contains `what` (the dead-letter task settles
/// the record shortly after the nack that ended its last attempt).
async fn within_describe(ep: &str, what: &str) -> String {
    for _ in 0..3_000 {
        let out = spool(ep, &["queue", "describe", "jobs", "q"])
            .await
            .ok()
            .stdout;
        if out.contains(what) {
            return out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("`spool queue describe` never showed {what:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_record_is_read_at_once_but_not_received_before_its_time() {
    let broker = TempBroker::start().await;
    let ep = broker.endpoint();
    spool(&ep, &["topic", "create", "later", "--partitions", "1"])
        .await
        .ok();
    spool(&ep, &["queue", "create", "later", "q"]).await.ok();
    spool_in(
        &ep,
        &["produce", "later", "-q", "--delay", "1h"],
        Some(b"wake-up\n".to_vec()),
    )
    .await
    .ok();
    spool_in(&ep, &["produce", "later", "-q"], Some(b"now\n".to_vec()))
        .await
        .ok();
    let read = spool(&ep, &["consume", "later", "-n", "2"]).await.ok();
    assert_eq!(read.lines(), vec!["wake-up", "now"]);
    let got = spool(
        &ep,
        &[
            "queue", "receive", "later", "q", "-n", "10", "--wait", "500ms",
        ],
    )
    .await
    .ok();
    assert_eq!(got.lines(), vec!["now"]);
    let describe = spool(&ep, &["queue", "describe", "later", "q"])
        .await
        .ok()
        .stdout;
    assert!(describe.contains("delayed 1"), "{describe}");
    let bad = spool_in(
        &ep,
        &[
            "produce",
            "later",
            "--delay",
            "1h",
            "--deliver-at",
            "2030-01-01T00:00:00Z",
        ],
        Some(b"x\n".to_vec()),
    )
    .await;
    assert_eq!(bad.code, 2, "conflicting flags are a usage error");
}
