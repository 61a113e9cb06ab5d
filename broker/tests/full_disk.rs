//! The real `spoold` on a really small file system: a 4 MiB tmpfs mounted over the data
//! directory by the test (it runs as root here and in CI; without the privilege to mount
//! it says so and skips). A tmpfs is no block device, but `fallocate` still reserves its
//! pages and fails with `ENOSPC` when they run out, which is what this needs.
//!
//! Guarded: appends fail with `RESOURCE_EXHAUSTED` saying the disk is full, nothing
//! acknowledged is lost, reads keep working, and once space is freed (a deleted topic)
//! appends succeed again, with no restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use spool_proto::v1::*;
use tonic::Code;

/// A test that needs root: in CI (`CI` set, where it runs as root) not being able to run is
/// a failure, never a pass; a developer without root is told how to run it.
fn cannot_run(why: &str) -> Option<Mount> {
    if std::env::var_os("CI").is_some() {
        panic!("{why}: CI must run this test");
    }
    eprintln!("SKIPPED: {why}; run as root (CI does)");
    None
}

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a `size` tmpfs over `dir`, or `None` (with a message) if that is not allowed.
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mount(dir.to_path_buf())),
            Ok(o) => cannot_run(&format!(
                "cannot mount a tmpfs on {} (run as root): {}",
                dir.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => cannot_run(&format!("cannot run mount: {e}")),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: a broker still running (a failed test) must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn payload(topic: &str, i: u64) -> String {
    format!("{topic}-{i:08}-{}", "p".repeat(1000))
}

async fn create(c: &mut Client, name: &str) {
    let req = CreateTopicRequest {
        name: name.into(),
        partitions: 1,
        config: Some(TopicConfig {
            segment_bytes: 64 * 1024,
            fsync: FsyncPolicy::Always as i32,
            ..TopicConfig::default()
        }),
        ..Default::default()
    };
    within("CreateTopic", c.create_topic(req))
        .await
        .unwrap_or_else(|s| panic!("CreateTopic {name}: {s}"));
}

/// Appends batches of 8 records of ~1 KiB until the broker refuses one; returns the
/// number of records acknowledged and the refusal.
async fn fill(c: &mut Client, topic: &str, first: u64, limit: u64) -> (u64, tonic::Status) {
    let mut next = first;
    while next < limit {
        let records = (next..next + 8).map(|i| rec(payload(topic, i))).collect();
        let req = AppendRequest {
            topic: topic.into(),
            partition: Some(0),
            records,
            ..AppendRequest::default()
        };
        match within("Append", c.append(req)).await {
            Ok(r) => {
                assert_eq!(r.into_inner().base_offset, next, "dense offsets");
                next += 8;
            }
            Err(s) => return (next - first, s),
        }
    }
    panic!("{topic}: {limit} records fit on a 4 MiB file system");
}

async fn assert_holds(c: &mut Client, topic: &str, count: u64) {
    let all = read_to_end(c, topic, 0, 0).await;
    assert_eq!(
        all.len() as u64,
        count,
        "{topic}: every acknowledged record"
    );
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(value(r), payload(topic, i as u64), "{topic} offset {i}");
    }
}

#[tokio::test]
async fn a_full_disk_refuses_appends_keeps_acknowledged_data_and_recovers_when_space_is_freed() {
    let mut broker = Broker::start();
    // Nothing is stored yet, so a kill loses nothing. (Not SIGTERM: spoold installs its
    // SIGTERM handler only after it logs `serving`, so a SIGTERM this early kills it.)
    broker.kill().await;
    let Some(_mount) = Mount::tmpfs(broker.data_dir(), "4m") else {
        return;
    };
    broker.restart();
    let mut c = broker.client().await;

    // A topic to delete later, taking about a third of the space.
    create(&mut c, "victim").await;
    let mut victim = 0;
    while victim < 1200 {
        let records = (victim..victim + 8)
            .map(|i| rec(payload("victim", i)))
            .collect();
        append(&mut c, "victim", 0, records).await;
        victim += 8;
    }

    create(&mut c, "main").await;
    let (acked, refused) = fill(&mut c, "main", 0, 10_000).await;
    eprintln!("main: {acked} records acknowledged, then: {refused:?}");
    assert!(acked > 0);
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}\n{}",
        refused.message(),
        broker.log()
    );
    assert!(
        refused.message().contains("disk full"),
        "the message says the disk is full: {}",
        refused.message()
    );
    // Still full: still refused, with the same answer, and nothing half-written.
    for _ in 0..5 {
        let (more, again) = fill(&mut c, "main", acked, 10_000).await;
        assert_eq!(more, 0, "an append succeeded on a full disk");
        assert_eq!(again.code(), Code::ResourceExhausted, "{}", again.message());
    }
    // Reads keep working and nothing acknowledged is lost.
    assert_holds(&mut c, "main", acked).await;
    assert_holds(&mut c, "victim", victim).await;
    assert_eq!(
        describe(&mut c, "main").await.partition_info[0].end_offset,
        acked
    );

    // Free space: delete the other topic. Appends resume, no restart.
    within(
        "DeleteTopic",
        c.delete_topic(DeleteTopicRequest {
            name: "victim".into(),
        }),
    )
    .await
    .expect("DeleteTopic on a full disk");
    let more: Vec<Record> = (acked..acked + 8)
        .map(|i| rec(payload("main", i)))
        .collect();
    let a = append(&mut c, "main", 0, more).await;
    assert_eq!(
        a.base_offset, acked,
        "appends resume right after the last acknowledged"
    );
    let (acked_after, refused) = fill(&mut c, "main", acked + 8, 10_000).await;
    let total = acked + 8 + acked_after;
    assert!(
        acked_after > 100,
        "the freed space is used: {acked_after} records"
    );
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
    assert_holds(&mut c, "main", total).await;

    // Everything acknowledged survives a restart on the (still full) file system too.
    broker.stop().await;
    broker.restart();
    let mut c = broker.client().await;
    assert_holds(&mut c, "main", total).await;
    broker.stop().await;
}
