//! Creating, listing, describing and deleting queues.

use spool_proto::v1::*;
use tonic::Code;

use crate::common::*;
use crate::*;

#[tokio::test]
async fn create_is_idempotent_for_the_same_config_and_refuses_another() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 2, FsyncPolicy::Always).await;
    let q = create_queue(&mut c, "jobs", "work", QueueConfig::default()).await;
    let cfg = q.config.clone().unwrap();
    assert_eq!((cfg.lease_ms, cfg.max_deliveries), (30_000, 5));
    assert_eq!(cfg.dead_letter_topic, "jobs.work.dlq");
    // The defaults spelled out are the same config.
    let again = create_queue(&mut c, "jobs", "work", cfg.clone()).await;
    assert_eq!(again.config, q.config);
    let other = c
        .create_queue(CreateQueueRequest {
            topic: "jobs".into(),
            queue: "work".into(),
            config: Some(QueueConfig {
                lease_ms: 1_000,
                ..QueueConfig::default()
            }),
            start: None,
        })
        .await;
    assert_eq!(code(other), Code::AlreadyExists);
    // The dead-letter topic exists, with one partition.
    assert_eq!(describe(&mut c, "jobs.work.dlq").await.partitions, 1);
    let listed = c
        .list_queues(ListQueuesRequest {
            topic: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .queues;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].partitions.len(), 2);
}

#[tokio::test]
async fn bad_requests_get_the_right_codes() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    let create = |queue: &str, config: QueueConfig, topic: &str| CreateQueueRequest {
        topic: topic.into(),
        queue: queue.into(),
        config: Some(config),
        start: None,
    };
    assert_eq!(
        code(
            c.create_queue(create("q", QueueConfig::default(), "nope"))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.create_queue(create("bad/name", QueueConfig::default(), "jobs"))
                .await
        ),
        Code::InvalidArgument
    );
    let backwards = QueueConfig {
        retry_backoff_min_ms: 10,
        retry_backoff_max_ms: 5,
        ..QueueConfig::default()
    };
    let s = status(c.create_queue(create("q", backwards, "jobs")).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("retry_backoff_min_ms"),
        "{}",
        s.message()
    );
    let own = QueueConfig {
        dead_letter_topic: "jobs".into(),
        ..QueueConfig::default()
    };
    assert_eq!(
        code(c.create_queue(create("q", own, "jobs")).await),
        Code::InvalidArgument
    );
    let r = c
        .receive(ReceiveRequest {
            topic: "jobs".into(),
            queue: "missing".into(),
            ..ReceiveRequest::default()
        })
        .await;
    assert_eq!(code(r), Code::NotFound);
    create_queue(&mut c, "jobs", "q", QueueConfig::default()).await;
    let unspecified = c
        .settle(SettleRequest {
            topic: "jobs".into(),
            queue: "q".into(),
            settlements: vec![Settlement::default()],
        })
        .await;
    assert_eq!(code(unspecified), Code::InvalidArgument);
}

#[tokio::test]
async fn deleting_a_queue_or_its_topic_ends_it_and_a_new_one_starts_afresh() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..3)).await;
    create_queue(&mut c, "jobs", "q", fast(30_000, 5)).await;
    let ds = receive_n(&mut c, "jobs", "q", 3).await;
    ack_all(&mut c, "jobs", "q", &ds[..1]).await;
    c.delete_queue(DeleteQueueRequest {
        topic: "jobs".into(),
        queue: "q".into(),
    })
    .await
    .unwrap();
    let gone = c
        .describe_queue(DescribeQueueRequest {
            topic: "jobs".into(),
            queue: "q".into(),
        })
        .await;
    assert_eq!(code(gone), Code::NotFound);
    // Created again: every record is available again, at attempt 1.
    create_queue(&mut c, "jobs", "q", fast(30_000, 5)).await;
    let again = receive_n(&mut c, "jobs", "q", 3).await;
    assert!(again.iter().all(|d| d.attempt == 1), "{again:?}");
    c.delete_topic(DeleteTopicRequest {
        name: "jobs".into(),
    })
    .await
    .unwrap();
    let listed = c
        .list_queues(ListQueuesRequest {
            topic: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .queues;
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn a_queue_takes_up_partitions_added_to_its_topic_across_a_restart() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("p0", 0..2)).await;
    create_queue(&mut c, "jobs", "q", QueueConfig::default()).await;
    let first = receive_n(&mut c, "jobs", "q", 2).await;
    ack_all(&mut c, "jobs", "q", &first).await;
    alter(&mut c, "jobs", 3, TopicConfig::default()).await;
    for p in 1..3 {
        append(&mut c, "jobs", p, recs(&format!("p{p}"), 0..2)).await;
    }
    let got = receive_n(&mut c, "jobs", "q", 4).await;
    let mut names: Vec<String> = got
        .iter()
        .map(|d| value(d.record.as_ref().unwrap()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["p1-0", "p1-1", "p2-0", "p2-1"],
        "the new partitions from their start"
    );
    let (acked, leased) = got.split_at(3);
    ack_all(&mut c, "jobs", "q", acked).await;
    b.kill().await;
    b.restart();
    let mut c = b.client().await;
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!(q.partitions.len(), 3);
    assert_eq!(
        q.acked_total, 5,
        "acks on the new partitions survived the restart"
    );
    // The one unacked lease outlives the restart; nothing acked comes back.
    assert_eq!(q.leased, 1);
    ack_all(&mut c, "jobs", "q", leased).await;
    assert!(receive(&mut c, "jobs", "q", 10, 300).await.is_empty());
}
