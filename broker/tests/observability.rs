//! The Grafana dashboard (`deploy/grafana/spool.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`) query only metrics a real broker exports: a workload
//! touches every family (appends, reads, a group, a queue with a dead letter, errors), then
//! every `spool_*` name either file uses must have a `# TYPE` line in `/metrics`.

mod common;

use std::collections::BTreeSet;

use common::*;
use spool_proto::v1::*;

/// The `spool_*` metric names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("spool_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The family a sample name belongs to: `# TYPE` lines name counters and histograms
/// without their `_total`, `_bucket`, `_sum` and `_count` suffixes.
fn typed(metrics: &str, name: &str) -> bool {
    let declared = |n: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {n} ")))
    };
    declared(name)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(declared))
}

fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{metrics}"))
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_exported_metrics() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 2, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..3)).await;
    read_to_end(&mut c, "jobs", 0, 0).await;
    commit(&mut c, "billing", "jobs", 0, 1).await;
    within(
        "CreateQueue",
        c.create_queue(CreateQueueRequest {
            topic: "jobs".into(),
            queue: "q".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let missing = c
        .describe_topic(DescribeTopicRequest {
            name: "nope".into(),
        })
        .await;
    assert_eq!(code(missing), tonic::Code::NotFound);

    let metrics = b.metrics();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["deploy/grafana/spool.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file} queries {names:?}");
        let missing: Vec<&String> = names.iter().filter(|n| !typed(&metrics, n)).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics /metrics lacks: {missing:?}"
        );
    }
    // The metrics this work added carry what happened.
    assert_eq!(
        sample(
            &metrics,
            r#"spool_rpc_errors_total{rpc="DescribeTopic",code="NOT_FOUND"}"#
        ),
        1.0
    );
    assert!(sample(&metrics, r#"spool_rpc_requests_total{rpc="Append"}"#) >= 1.0);
    assert!(sample(&metrics, "spool_read_latency_seconds_count") >= 1.0);
    assert!(
        sample(
            &metrics,
            r#"spool_partition_disk_bytes{topic="jobs",partition="0"}"#
        ) > 0.0
    );
    assert!(sample(&metrics, "spool_disk_free_bytes") > 0.0);
    assert!(
        sample(&metrics, "spool_disk_total_bytes") >= sample(&metrics, "spool_disk_free_bytes")
    );
}

#[test]
fn metric_names_are_found_whole() {
    let names = metric_names(r#"rate(spool_a_total[1m]) / spool_b{x="spool_c"} + myspool_d"#);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["spool_a_total", "spool_b", "spool_c"]
    );
}
