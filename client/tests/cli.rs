//! End-to-end tests of the `spool` binary against an in-process broker on an ephemeral
//! loopback port with a temporary data directory.

use spool_broker::testing::TempBroker;

mod cli_support;

use cli_support::*;

fn seq(from: u64, to: u64) -> Vec<u8> {
    let mut s = String::new();
    for i in from..=to {
        s.push_str(&i.to_string());
        s.push('\n');
    }
    s.into_bytes()
}

fn numbers(from: u64, to: u64) -> Vec<String> {
    (from..=to).map(|i| i.to_string()).collect()
}

fn sorted(lines: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    v.sort_by_key(|s| s.parse::<u64>().unwrap_or(u64::MAX));
    v
}

/// The COMMITTED column of `spool offsets get`, per partition (None for `-`).
fn committed(table: &str) -> Vec<Option<u64>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).and_then(|c| c.parse().ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_create_list_describe_delete() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    let created = spool(
        &e,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--retention-ms",
            "3600000",
            "--fsync",
            "interval",
            "--fsync-interval-ms",
            "250",
            "--max-record-bytes",
            "4096",
        ],
    )
    .await
    .ok();
    assert!(
        created
            .stdout
            .contains("created topic orders with 3 partitions")
    );
    spool(
        &e,
        &["topic", "create", "audit", "-p", "1", "--fsync", "never"],
    )
    .await
    .ok();
    spool_in(&e, &["produce", "audit", "-q"], Some(seq(1, 5)))
        .await
        .ok();

    let list = spool(&e, &["topic", "list"]).await.ok();
    let lines = list.lines();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "PARTITIONS", "RECORDS", "SIZE", "FSYNC"]
    );
    let audit: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        (audit[0], audit[1], audit[2]),
        ("audit", "1", "5"),
        "{}",
        list.stdout
    );
    assert_eq!(audit.last(), Some(&"never"));
    assert!(lines[2].starts_with("orders") && lines[2].contains("interval (250 ms)"));

    let d = spool(&e, &["topic", "describe", "orders"]).await.ok();
    for want in [
        "partitions",
        "3600000 (1h)",
        "interval (250 ms)",
        "4.0 KiB",
        "PARTITION",
    ] {
        assert!(
            d.stdout.contains(want),
            "{want:?} missing from\n{}",
            d.stdout
        );
    }
    let partition_rows: Vec<&str> = d
        .stdout
        .lines()
        .skip_while(|l| !l.contains("PARTITION"))
        .skip(1)
        .collect();
    assert_eq!(partition_rows.len(), 3, "{}", d.stdout);
    assert!(d.stdout.contains("compression"), "{}", d.stdout);
    // A single node leads and holds every partition.
    for row in &partition_rows {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[cells.len() - 3..], ["1", "1", "1"], "{}", d.stdout);
    }
    let status = spool(&e, &["cluster", "status"]).await.ok();
    let lines = status.lines();
    assert_eq!(lines[0], "metadata leader: 1", "{}", status.stdout);
    let node: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(
        (node[0], node[2], node[3], node[4]),
        ("1", "up", "4", "0"),
        "orders (3) and audit (1), all led here\n{}",
        status.stdout
    );

    let altered = spool(
        &e,
        &[
            "topic",
            "alter",
            "orders",
            "--partitions",
            "5",
            "--compression",
            "zstd",
            "--compression-level",
            "-3",
            "--reset",
            "max_record_bytes",
            "--segment-ms",
            "60000",
        ],
    )
    .await
    .ok();
    assert!(
        altered
            .stdout
            .contains("altered topic orders: 5 partitions")
    );
    let d = spool(&e, &["topic", "describe", "orders"]).await.ok();
    for want in [
        "zstd (level -3)",
        "1.0 MiB",
        "3600000 (1h)",
        "60000 (1m)",
        "cleanup-policy",
    ] {
        assert!(
            d.stdout.contains(want),
            "{want:?} missing from\n{}",
            d.stdout
        );
    }
    let compact = [
        "topic",
        "alter",
        "orders",
        "--cleanup-policy",
        "compact-delete",
    ];
    spool(&e, &compact).await.ok();
    let d = spool(&e, &["topic", "describe", "orders"]).await.ok();
    assert!(d.stdout.contains("compact,delete"), "{}", d.stdout);
    let fewer = spool(&e, &["topic", "alter", "orders", "--partitions", "2"]).await;
    assert_eq!(fewer.code, 1);
    assert!(
        fewer.stderr.contains("partitions can only be added"),
        "{}",
        fewer.stderr
    );

    let dup = spool(&e, &["topic", "create", "orders", "-p", "1"]).await;
    assert_eq!(dup.code, 1);
    assert_eq!(dup.stderr.trim(), "spool: topic \"orders\" already exists");

    spool(&e, &["topic", "delete", "orders"]).await.ok();
    let list = spool(&e, &["topic", "list"]).await.ok();
    assert!(!list.stdout.contains("orders"), "{}", list.stdout);
    let gone = spool(&e, &["topic", "delete", "orders"]).await;
    assert_eq!(gone.code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_lines_round_trip_in_order() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    spool(&e, &["topic", "create", "t", "--partitions", "1"])
        .await
        .ok();
    let produced = spool_in(&e, &["produce", "t"], Some(seq(1, 100_000)))
        .await
        .ok();
    assert!(
        produced.stderr.contains("produced 100,000 records to t in"),
        "{}",
        produced.stderr
    );
    let consumed = spool(&e, &["consume", "t", "-n", "100000"]).await.ok();
    assert_eq!(consumed.lines(), numbers(1, 100_000));
    // Without -n it stops by itself once caught up with the end seen at start.
    let all = spool(&e, &["consume", "t"]).await.ok();
    assert_eq!(all.lines().len(), 100_000);
    let list = spool(&e, &["topic", "list"]).await.ok();
    assert!(list.stdout.contains("100,000"), "{}", list.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_compression_produces_and_consumes_the_same_lines() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    spool(&e, &["topic", "create", "z", "--partitions", "1"])
        .await
        .ok();
    for codec in ["gzip", "zstd"] {
        spool_in(
            &e,
            &["--grpc-compression", codec, "produce", "z", "-q"],
            Some(seq(1, 2_000)),
        )
        .await
        .ok();
    }
    let gzip = spool(
        &e,
        &["--grpc-compression", "gzip", "consume", "z", "-n", "4000"],
    )
    .await
    .ok();
    let mut expected = numbers(1, 2_000);
    expected.extend(numbers(1, 2_000));
    assert_eq!(gzip.lines(), expected);
    let bad = spool(&e, &["--grpc-compression", "brotli", "topic", "list"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_partition_topic_gives_back_the_same_multiset() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    spool(&e, &["topic", "create", "m", "--partitions", "4"])
        .await
        .ok();
    spool_in(&e, &["produce", "m", "--quiet"], Some(seq(1, 20_000)))
        .await
        .ok();
    // Duplicated lines must stay duplicated: a multiset, not a set.
    spool_in(&e, &["produce", "m", "-q"], Some(b"7\n7\n".to_vec()))
        .await
        .ok();
    let consumed = spool(&e, &["consume", "m"]).await.ok();
    let mut want = numbers(1, 20_000);
    want.extend(["7".to_string(), "7".to_string()]);
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(sorted(&consumed.lines()), sorted(&want));

    let describe = spool(&e, &["topic", "describe", "m"]).await.ok();
    let used = describe
        .stdout
        .lines()
        .skip_while(|l| !l.contains("PARTITION"))
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) != Some("0"))
        .count();
    assert!(
        used > 1,
        "records spread over partitions:\n{}",
        describe.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_carries_key_headers_partition_and_offset() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    spool(&e, &["topic", "create", "j", "--partitions", "2"])
        .await
        .ok();
    spool_in(
        &e,
        &[
            "produce",
            "j",
            "--key",
            "k1",
            "--header",
            "source=test",
            "-H",
            "n=2",
            "--partition",
            "1",
        ],
        Some(b"hello\r\nworld\n".to_vec()),
    )
    .await
    .ok();
    let out = spool(&e, &["consume", "j", "--output", "json"]).await.ok();
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let v: serde_json::Value = serde_json::from_str(lines[1]).expect("a JSON line");
    assert_eq!(v["partition"], 1);
    assert_eq!(v["offset"], 1);
    assert_eq!(v["key"], "k1");
    assert_eq!(v["value"], "world");
    assert!(v["timestamp_ms"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(
        v["headers"],
        serde_json::json!([{"key": "source", "value": "test"}, {"key": "n", "value": "2"}])
    );
    let first: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(first["value"], "hello", "the \\r\\n line ending is dropped");

    let bad = spool(&e, &["produce", "j", "--header", "novalue"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let bad = spool_in(
        &e,
        &["produce", "j", "--partition", "5"],
        Some(b"x\n".to_vec()),
    )
    .await;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("partition 5 does not exist"),
        "{}",
        bad.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_start_positions_and_follow() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    spool(&e, &["topic", "create", "p", "--partitions", "2"])
        .await
        .ok();
    spool_in(
        &e,
        &["produce", "p", "-q", "--partition", "0"],
        Some(seq(1, 10)),
    )
    .await
    .ok();
    spool_in(
        &e,
        &["produce", "p", "-q", "--partition", "1"],
        Some(seq(11, 15)),
    )
    .await
    .ok();

    let from = spool(
        &e,
        &["consume", "p", "--partition", "0", "--from", "offset:7"],
    )
    .await
    .ok();
    assert_eq!(from.lines(), ["8", "9", "10"]);
    let one = spool(&e, &["consume", "p", "-p", "1"]).await.ok();
    assert_eq!(one.lines(), numbers(11, 15));
    let latest = spool(&e, &["consume", "p", "--from", "latest"]).await.ok();
    assert!(latest.stdout.is_empty(), "{}", latest.stdout);
    let past = spool(&e, &["consume", "p", "--from", "time:2000-01-01T00:00:00Z"])
        .await
        .ok();
    assert_eq!(past.lines().len(), 15);
    let future = spool(&e, &["consume", "p", "--from", "time:2999-01-01T00:00:00Z"])
        .await
        .ok();
    assert!(future.stdout.is_empty());
    let bad = spool(&e, &["consume", "p", "--from", "middle"]).await;
    assert_eq!(bad.code, 2);

    // --follow waits for records appended after it started.
    let tail = tokio::spawn({
        let e = e.clone();
        async move {
            spool(
                &e,
                &["consume", "p", "--from", "latest", "--follow", "-n", "2"],
            )
            .await
        }
    });
    // Produce only once the consumer's subscription is open (its "latest" is resolved
    // before the broker counts it), however slowly the CLI starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while active_subscriptions(broker.metrics_addr()) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the --follow consumer never subscribed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    spool_in(
        &e,
        &["produce", "p", "-q", "-p", "0"],
        Some(b"new-1\nnew-2\n".to_vec()),
    )
    .await
    .ok();
    let tail = tokio::time::timeout(std::time::Duration::from_secs(20), tail)
        .await
        .expect("--follow -n 2 ends after two records")
        .expect("join")
        .ok();
    assert_eq!(tail.lines(), ["new-1", "new-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commits_exactly_what_it_printed_and_lag_goes_to_zero() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    spool(&e, &["topic", "create", "jobs", "--partitions", "3"])
        .await
        .ok();
    spool_in(&e, &["produce", "jobs", "-q"], Some(seq(1, 3000)))
        .await
        .ok();

    let before = spool(&e, &["group", "describe", "workers", "--topic", "jobs"])
        .await
        .ok();
    assert!(
        before.stdout.contains("total lag 3,000"),
        "{}",
        before.stdout
    );

    let member = ["--group", "workers", "--session-timeout", "500ms"];
    let first = spool(
        &e,
        &[&["consume", "jobs", "-n", "1000"][..], &member[..]].concat(),
    )
    .await
    .ok();
    assert_eq!(first.lines().len(), 1000);
    let offsets = spool(
        &e,
        &["offsets", "get", "--group", "workers", "--topic", "jobs"],
    )
    .await
    .ok();
    let total: u64 = committed(&offsets.stdout).into_iter().flatten().sum();
    assert_eq!(
        total, 1000,
        "commits cover exactly the printed records:\n{}",
        offsets.stdout
    );
    let mid = spool(&e, &["group", "describe", "workers"]).await.ok();
    assert!(mid.stdout.contains("total lag 2,000"), "{}", mid.stdout);

    // The next run resumes from the commits (once the first member's session expired).
    let rest = spool(&e, &[&["consume", "jobs"][..], &member[..]].concat())
        .await
        .ok();
    assert_eq!(rest.lines().len(), 2000);
    let mut all = first.lines();
    all.extend(rest.lines());
    let want = numbers(1, 3000);
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(sorted(&all), sorted(&want), "every record exactly once");

    let after = spool(&e, &["group", "describe", "workers", "--topic", "jobs"])
        .await
        .ok();
    assert!(after.stdout.contains("total lag 0"), "{}", after.stdout);
    let header = after
        .stdout
        .lines()
        .find(|l| l.contains("COMMITTED"))
        .expect("a partition table");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["PARTITION", "MEMBER", "COMMITTED", "END", "LAG"]
    );
    for row in after
        .stdout
        .lines()
        .skip_while(|l| !l.contains("COMMITTED"))
        .skip(1)
    {
        assert_eq!(row.split_whitespace().last(), Some("0"), "{}", after.stdout);
    }
    let groups = spool(&e, &["group", "list"]).await.ok();
    assert_eq!(
        groups.lines()[1].split_whitespace().collect::<Vec<_>>(),
        ["workers", "jobs"]
    );
    // Caught up: another run prints nothing and returns.
    let again = spool(&e, &[&["consume", "jobs"][..], &member[..]].concat())
        .await
        .ok();
    assert!(again.stdout.is_empty(), "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_commit_moves_where_the_group_resumes() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    spool(&e, &["topic", "create", "o", "--partitions", "1"])
        .await
        .ok();
    spool_in(&e, &["produce", "o", "-q"], Some(seq(1, 10)))
        .await
        .ok();
    let c = spool(
        &e,
        &[
            "offsets",
            "commit",
            "--group",
            "g",
            "--topic",
            "o",
            "--partition",
            "0",
            "--offset",
            "7",
        ],
    )
    .await
    .ok();
    assert!(c.stdout.contains("committed offset 7"), "{}", c.stdout);
    let got = spool(&e, &["offsets", "get", "-g", "g", "-t", "o"])
        .await
        .ok();
    assert_eq!(committed(&got.stdout), [Some(7)]);
    let rest = spool(&e, &["consume", "o", "--group", "g"]).await.ok();
    assert_eq!(rest.lines(), ["8", "9", "10"]);
    let beyond = spool(
        &e,
        &[
            "offsets", "commit", "-g", "g", "-t", "o", "-p", "0", "-o", "99",
        ],
    )
    .await;
    assert_eq!(beyond.code, 1, "{}", beyond.stderr);
    assert!(!beyond.stderr.contains("Status"), "{}", beyond.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_exits_1_with_a_clear_message() {
    let broker = TempBroker::start().await;
    let e = broker.endpoint();
    for args in [
        &["consume", "nope"][..],
        &["consume", "nope", "--group", "g"],
        &["topic", "describe", "nope"],
        &["offsets", "get", "-g", "g", "-t", "nope"],
    ] {
        let r = spool(&e, args).await;
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert_eq!(
            r.stderr.trim(),
            "spool: topic \"nope\" does not exist",
            "{args:?}"
        );
    }
    let r = spool_in(&e, &["produce", "nope"], Some(b"x\n".to_vec())).await;
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim(), "spool: topic \"nope\" does not exist");
}

#[test]
fn unreachable_broker_exits_3_with_a_friendly_message() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let r = run_blocking(
        &[
            "--server".into(),
            url.clone(),
            "topic".into(),
            "list".into(),
        ],
        None,
        &[],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim(),
        format!("spool: cannot reach the broker at {url}: connection refused; is spoold running?")
    );
    // SPOOL_SERVER is honoured the same way.
    let r = run_blocking(
        &["consume".into(), "t".into()],
        None,
        &[("SPOOL_SERVER", &url)],
    );
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains(&url), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let r = run_blocking(&["topic".into(), "create".into(), "x".into()], None, &[]);
    assert_eq!(r.code, 2, "missing --partitions: {}", r.stderr);
    let r = run_blocking(&["frobnicate".into()], None, &[]);
    assert_eq!(r.code, 2);
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &[],
        &["topic", "create"],
        &["topic", "list"],
        &["topic", "describe"],
        &["topic", "delete"],
        &["produce"],
        &["consume"],
        &["group", "list"],
        &["group", "describe"],
        &["offsets", "commit"],
        &["offsets", "get"],
        &["queue", "create"],
        &["queue", "list"],
        &["queue", "describe"],
        &["queue", "delete"],
        &["queue", "receive"],
        &["queue", "work"],
        &["queue", "redrive"],
        &["completions"],
        &["man"],
    ];
    for c in commands {
        let mut args: Vec<String> = c.iter().map(|s| s.to_string()).collect();
        args.push("--help".into());
        let r = run_blocking(&args, None, &[]);
        assert_eq!(r.code, 0, "{c:?}: {}", r.stderr);
        assert!(
            r.stdout.contains("Example"),
            "{c:?} has no example:\n{}",
            r.stdout
        );
        assert!(r.stdout.contains("spool "), "{c:?}:\n{}", r.stdout);
    }
    let top = run_blocking(&["--help".into()], None, &[]);
    assert!(top.stdout.contains("Exit codes"), "{}", top.stdout);
    for c in ["topic", "group", "offsets", "queue"] {
        let r = run_blocking(&[c.into(), "--help".into()], None, &[]);
        assert_eq!(r.code, 0, "{c}");
    }
    let consume = run_blocking(&["consume".into(), "--help".into()], None, &[]);
    assert!(consume.stdout.contains("base64"), "{}", consume.stdout);
}

/// The broker's `spool_active_subscriptions` gauge, from `/metrics` (plain HTTP/1.0).
fn active_subscriptions(addr: std::net::SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("send the request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read /metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("spool_active_subscriptions "))
        .unwrap_or_else(|| panic!("no spool_active_subscriptions in\n{body}"))
        .trim()
        .parse()
        .expect("a number")
}
