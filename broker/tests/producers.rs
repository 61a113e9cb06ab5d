//! End to end: idempotent producer state is bounded (expiry and the per-partition cap), a
//! forgotten producer's retry is `FAILED_PRECONDITION` saying why (never a duplicate), and
//! `TopicConfig.producer_id_expiration_ms` (field 11) is honoured and shown.

mod common;

use common::*;
use spool_proto::v1::*;
use tonic::Code;

fn stamped(topic: &str, producer_id: u64, sequence: u64) -> AppendRequest {
    AppendRequest {
        topic: topic.into(),
        partition: Some(0),
        records: vec![rec(format!("p{producer_id}s{sequence}"))],
        producer_id,
        sequence,
        ..AppendRequest::default()
    }
}

async fn create_with(c: &mut Client, name: &str, config: TopicConfig) -> TopicInfo {
    let req = CreateTopicRequest {
        name: name.into(),
        partitions: 1,
        config: Some(config),
        ..Default::default()
    };
    c.create_topic(req)
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap()
}

#[tokio::test]
async fn an_evicted_producer_is_failed_precondition_across_a_kill_9() {
    let mut broker = Broker::start_with(&["--max-producers-per-partition", "2"]);
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    for (p, s) in [(1, 0), (1, 1), (2, 0), (3, 0)] {
        c.append(stamped("t", p, s)).await.unwrap();
    }
    let check_refusals = |s1: tonic::Status, s0: tonic::Status| {
        assert_eq!(s1.code(), Code::FailedPrecondition, "{s1}");
        assert!(s1.message().contains("new producer id"), "{s1}");
        assert_eq!(s0.code(), Code::FailedPrecondition, "{s0}");
        assert!(s0.message().contains("forgotten"), "{s0}");
    };
    check_refusals(
        status(c.append(stamped("t", 1, 1)).await),
        status(c.append(stamped("t", 1, 0)).await),
    );
    broker.kill().await;
    broker.restart();
    let mut c = broker.client().await;
    check_refusals(
        status(c.append(stamped("t", 1, 1)).await),
        status(c.append(stamped("t", 1, 0)).await),
    );
    assert_eq!(
        values(&read_to_end(&mut c, "t", 0, 0).await),
        ["p1s0", "p1s1", "p2s0", "p3s0"],
        "no refused retry was appended"
    );
}

#[tokio::test]
async fn an_idle_producer_expires_after_the_topics_expiration_time() {
    let broker = Broker::start_with(&["--retention-check-ms", "100"]);
    let mut c = broker.client().await;
    let default = create_topic(&mut c, "default", 1, FsyncPolicy::Never).await;
    assert_eq!(
        default.config.unwrap().producer_id_expiration_ms,
        7 * 24 * 3600 * 1000,
        "the broker's default is shown"
    );
    let info = create_with(
        &mut c,
        "t",
        TopicConfig {
            producer_id_expiration_ms: 300,
            ..TopicConfig::default()
        },
    )
    .await;
    assert_eq!(info.config.unwrap().producer_id_expiration_ms, 300);
    let first = c.append(stamped("t", 9, 0)).await.unwrap().into_inner();
    assert!(!first.duplicate);
    // A retry is a duplicate until the producer expires; then it is refused, never
    // appended again.
    let refused = within("the producer to expire", async {
        loop {
            match c.append(stamped("t", 9, 0)).await {
                Ok(r) => assert!(r.into_inner().duplicate, "a retry was appended"),
                Err(s) => return s,
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert_eq!(values(&read_to_end(&mut c, "t", 0, 0).await), ["p9s0"]);
    // The producer on the default topic is still remembered.
    c.append(AppendRequest {
        topic: "default".into(),
        ..stamped("t", 9, 0)
    })
    .await
    .unwrap();
    let again = c
        .append(AppendRequest {
            topic: "default".into(),
            ..stamped("t", 9, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
}
