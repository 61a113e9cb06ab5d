//! The real `spoold` running out of file descriptors: its open file limit is lowered while
//! it runs (`prlimit` on its pid, as an operator's `LimitNOFILE=` would leave it), then a
//! topic with more partitions than the limit allows is created.
//!
//! Guarded: the create is `RESOURCE_EXHAUSTED` naming the limit to raise, the half-created
//! topic leaves nothing behind (not listed, no directory, its descriptors closed, the name
//! free again), and the topics that exist keep working, across a restart too.

mod common;

use std::fs;

use common::*;
use rustix::process::{Pid, Resource, Rlimit, prlimit};
use spool_proto::v1::*;
use tonic::Code;

/// The open file limit the broker is left with: a few dozen above what it holds at start.
const LIMIT: u64 = 160;

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the broker's descriptors")
        .count()
}

async fn topic_names(c: &mut Client) -> Vec<String> {
    let resp = within("ListTopics", c.list_topics(ListTopicsRequest::default()))
        .await
        .expect("ListTopics")
        .into_inner();
    resp.topics.into_iter().map(|t| t.name).collect()
}

#[tokio::test]
async fn a_topic_past_the_open_file_limit_is_resource_exhausted_and_leaves_nothing_behind() {
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "small", 4, FsyncPolicy::Always).await;
    append(&mut c, "small", 0, recs("before", 0..10)).await;

    let pid = broker.pid();
    let limit = Rlimit {
        current: Some(LIMIT),
        maximum: Some(LIMIT),
    };
    prlimit(Pid::from_raw(pid as i32), Resource::Nofile, limit).expect("lower the limit");
    let before = open_fds(pid);
    assert!(
        (before as u64) < LIMIT - 20,
        "the broker starts with {before} descriptors open; LIMIT must leave room"
    );

    let wide = CreateTopicRequest {
        name: "wide".into(),
        partitions: 2 * LIMIT as u32,
        ..CreateTopicRequest::default()
    };
    let s = status(within("CreateTopic", c.create_topic(wide)).await);
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("too many open files") && s.message().contains("RLIMIT_NOFILE"),
        "the message names the limit to raise: {}",
        s.message()
    );

    // Nothing of the half-created topic stays.
    assert_eq!(topic_names(&mut c).await, vec!["small".to_string()]);
    assert!(
        !broker.data_dir().join("topics/wide").exists(),
        "the half-created topic's directory is removed"
    );
    let after = open_fds(pid);
    assert!(
        after <= before + 2,
        "the half-created topic's partitions are closed: {before} descriptors before, {after} after"
    );
    let s = status(
        within(
            "DescribeTopic",
            c.describe_topic(DescribeTopicRequest {
                name: "wide".into(),
            }),
        )
        .await,
    );
    assert_eq!(s.code(), Code::NotFound, "{s:?}");

    // The name is free and the broker works within its limit.
    create_topic(&mut c, "wide", 8, FsyncPolicy::Always).await;
    append(&mut c, "small", 0, recs("after", 10..20)).await;
    append(&mut c, "wide", 7, recs("wide", 0..5)).await;
    let small = read_to_end(&mut c, "small", 0, 0).await;
    assert_eq!(
        values(&small),
        [recs("before", 0..10), recs("after", 10..20)]
            .concat()
            .iter()
            .map(value)
            .collect::<Vec<_>>()
    );

    broker.stop().await;
    broker.restart();
    let mut c = broker.client().await;
    let mut names = topic_names(&mut c).await;
    names.sort();
    assert_eq!(names, ["small", "wide"]);
    assert_eq!(read_to_end(&mut c, "small", 0, 0).await.len(), 20);
    assert_eq!(
        values(&read_to_end(&mut c, "wide", 7, 0).await),
        values(&recs("wide", 0..5))
    );
}
