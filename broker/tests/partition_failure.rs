//! A partition whose fsync failed is reported, per partition, without taking the broker
//! down: `DescribeTopic` says FAILED and why, `spool_partition_failed` is 1 for it, the
//! `spool.v1.Partitions` health service is NOT_SERVING, while the overall health stays
//! SERVING and the other partitions keep accepting appends. A restart recovers it.
//!
//! In-process (not the `spoold` binary): the storage fault layer's rules live in this
//! process, so the broker must too.

mod common;

use std::path::Path;

use common::*;
use spool_broker::BrokerConfig;
use spool_broker::server::{self, Running};
use spool_proto::v1::*;
use spool_storage::faults;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

type Health = HealthClient<tonic::transport::Channel>;

/// EIO: what a failing disk answers an fsync with.
const EIO: i32 = 5;

async fn start(dir: &Path) -> Running {
    server::start(BrokerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        ..BrokerConfig::default()
    })
    .await
    .expect("broker starts")
}

async fn connect(r: &Running) -> (Client, Health) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", r.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (Client::new(channel.clone()), HealthClient::new(channel))
}

async fn health_of(h: &mut Health, service: &str) -> ServingStatus {
    let r = within(
        "Health.Check",
        h.check(HealthCheckRequest {
            service: service.into(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("Health.Check {service:?}: {s}"))
    .into_inner();
    ServingStatus::try_from(r.status).expect("a known status")
}

/// Waits (Health.Watch, no sleeping) until `service` reports `want`.
async fn wait_for_health(h: &mut Health, service: &str, want: ServingStatus) {
    let mut updates = within(
        "Health.Watch",
        h.watch(HealthCheckRequest {
            service: service.into(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    loop {
        let got = within("a health update", updates.next())
            .await
            .expect("the watch stream stays open")
            .expect("a health update");
        if got.status == want as i32 {
            return;
        }
    }
}

/// `GET /metrics` over HTTP/1.0; the body.
async fn metrics(r: &Running) -> String {
    let mut s = tokio::net::TcpStream::connect(r.metrics_addr)
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: spool\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    within("GET /metrics", s.read_to_string(&mut out))
        .await
        .unwrap();
    out
}

fn failed_gauge(metrics: &str, topic: &str, partition: u32) -> Option<i64> {
    let prefix = format!("spool_partition_failed{{topic=\"{topic}\",partition=\"{partition}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("a gauge value"))
}

/// Fails partition 0's next fsync: the append waiting for it fails, and the partition is
/// poisoned from then on.
async fn fail_partition_zero(c: &mut Client, dir: &Path, topic: &str) {
    let partition_dir = dir.join("topics").join(topic).join("0");
    faults::fail(&partition_dir, faults::Op::Sync, 1, EIO);
    let req = AppendRequest {
        topic: topic.into(),
        partition: Some(0),
        records: vec![rec("lost")],
        ..AppendRequest::default()
    };
    let failed = within("Append", c.append(req)).await;
    faults::clear(&partition_dir);
    assert_eq!(code(failed), Code::Internal, "the failed fsync itself");
}

fn state(info: &TopicInfo, partition: usize) -> (PartitionState, String) {
    let p = &info.partition_info[partition];
    (
        PartitionState::try_from(p.state).expect("a known state"),
        p.failure.clone(),
    )
}

#[tokio::test]
async fn a_failed_fsync_is_reported_per_partition_and_a_restart_recovers_it() {
    let dir = tempfile::TempDir::with_prefix("spool-poison-").unwrap();
    let broker = start(dir.path()).await;
    let (mut c, mut h) = connect(&broker).await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Always).await;
    append(&mut c, "t", 0, recs("before", 0..3)).await;
    append(&mut c, "t", 1, recs("before", 0..3)).await;
    let info = describe(&mut c, "t").await;
    assert_eq!(state(&info, 0), (PartitionState::Ok, String::new()));
    assert_eq!(failed_gauge(&metrics(&broker).await, "t", 0), Some(0));
    assert_eq!(
        health_of(&mut h, "spool.v1.Partitions").await,
        ServingStatus::Serving
    );

    fail_partition_zero(&mut c, dir.path(), "t").await;

    // The fault is cleared, yet the partition refuses appends: its log is poisoned.
    let req = AppendRequest {
        topic: "t".into(),
        partition: Some(0),
        records: vec![rec("refused")],
        ..AppendRequest::default()
    };
    assert_eq!(code(c.append(req).await), Code::Unavailable);
    let info = describe(&mut c, "t").await;
    let (st, failure) = state(&info, 0);
    assert_eq!(st, PartitionState::Failed);
    assert!(
        failure.contains("fsync") && failure.contains("os error 5"),
        "says what failed: {failure}"
    );
    assert!(failure.contains("restart"), "says what to do: {failure}");
    assert_eq!(state(&info, 1), (PartitionState::Ok, String::new()));
    let m = metrics(&broker).await;
    assert_eq!(failed_gauge(&m, "t", 0), Some(1), "{m}");
    assert_eq!(failed_gauge(&m, "t", 1), Some(0), "{m}");
    wait_for_health(&mut h, "spool.v1.Partitions", ServingStatus::NotServing).await;
    assert_eq!(health_of(&mut h, "").await, ServingStatus::Serving);
    assert_eq!(
        health_of(&mut h, "spool.v1.Broker").await,
        ServingStatus::Serving
    );
    // The other partition is untouched, and the failed one still serves what it has.
    append(&mut c, "t", 1, recs("after", 0..2)).await;
    assert_eq!(read_to_end(&mut c, "t", 1, 0).await.len(), 5);
    assert_eq!(
        values(&read_to_end(&mut c, "t", 0, 0).await)[..3],
        ["before-0", "before-1", "before-2"]
    );

    drop((c, h));
    broker.shutdown().await.expect("a graceful shutdown");
    let broker = start(dir.path()).await;
    let (mut c, mut h) = connect(&broker).await;
    let info = describe(&mut c, "t").await;
    assert_eq!(state(&info, 0), (PartitionState::Ok, String::new()));
    assert_eq!(failed_gauge(&metrics(&broker).await, "t", 0), Some(0));
    assert_eq!(
        health_of(&mut h, "spool.v1.Partitions").await,
        ServingStatus::Serving
    );
    let r = append(&mut c, "t", 0, recs("recovered", 0..1)).await;
    assert_eq!(r.durability, Durability::Fsynced as i32);
    let got = values(&read_to_end(&mut c, "t", 0, 0).await);
    assert_eq!(got[..3], ["before-0", "before-1", "before-2"]);
    assert_eq!(got.last().map(String::as_str), Some("recovered-0"));
    drop((c, h));
    broker.shutdown().await.expect("a graceful shutdown");
}

#[tokio::test]
async fn deleting_the_failed_topic_makes_partitions_serving_again() {
    let dir = tempfile::TempDir::with_prefix("spool-poison-").unwrap();
    let broker = start(dir.path()).await;
    let (mut c, mut h) = connect(&broker).await;
    create_topic(&mut c, "doomed", 1, FsyncPolicy::Always).await;
    create_topic(&mut c, "healthy", 1, FsyncPolicy::Always).await;
    append(&mut c, "doomed", 0, recs("x", 0..1)).await;
    fail_partition_zero(&mut c, dir.path(), "doomed").await;
    wait_for_health(&mut h, "spool.v1.Partitions", ServingStatus::NotServing).await;

    within(
        "DeleteTopic",
        c.delete_topic(DeleteTopicRequest {
            name: "doomed".into(),
        }),
    )
    .await
    .unwrap();
    wait_for_health(&mut h, "spool.v1.Partitions", ServingStatus::Serving).await;
    append(&mut c, "healthy", 0, recs("y", 0..1)).await;
    drop((c, h));
    broker.shutdown().await.expect("a graceful shutdown");
}
