//! A consumer group member cannot grow the broker's memory by sending requests and never
//! reading the answers: its stream stops reading requests once its unread answers reach a
//! bound, and HTTP/2 flow control holds the rest on the member's side.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use spool_broker::service::consume::MAX_UNSENT_RESPONSES;
use spool_proto::v1::consume_request::Kind as Req;
use spool_proto::v1::*;

/// The broker's `spool_consume_unsent_responses` gauge.
fn unsent(broker: &Broker) -> u64 {
    let body = broker.metrics();
    body.lines()
        .find_map(|l| l.strip_prefix("spool_consume_unsent_responses "))
        .unwrap_or_else(|| panic!("no spool_consume_unsent_responses in\n{body}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn a_member_that_never_reads_its_answers_is_held_back_at_a_bound() {
    let broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    // Well past what the broker's 4 MiB stream window can hold (~12 bytes a request).
    const TOTAL: u64 = 1_500_000;
    let pulled = Arc::new(AtomicU64::new(0));
    let requests = futures::stream::unfold(0u64, {
        let pulled = Arc::clone(&pulled);
        move |i| {
            let pulled = Arc::clone(&pulled);
            async move {
                if i > TOTAL {
                    // Stay open: the member neither leaves nor reads.
                    futures::future::pending::<()>().await;
                }
                pulled.store(i, Ordering::Relaxed);
                let kind = if i == 0 {
                    Req::Join(JoinGroup {
                        group: "g".into(),
                        topic: "t".into(),
                        ..JoinGroup::default()
                    })
                } else {
                    // Past the end: each is answered at once with a rejection.
                    Req::Commit(CommitRequest {
                        partition: 0,
                        offset: 1_000_000 + i,
                    })
                };
                Some((ConsumeRequest { kind: Some(kind) }, i + 1))
            }
        }
    });
    let _answers = within("Consume", c.consume(requests)).await.unwrap();
    // Wait until the broker stops taking requests (no progress for a second) or has taken
    // them all.
    let deadline = Instant::now() + PATIENCE;
    let (mut last, mut still_since) = (0, Instant::now());
    loop {
        let now = pulled.load(Ordering::Relaxed);
        if now >= TOTAL {
            break;
        }
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if now > 0 && still_since.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress to judge by");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued = unsent(&broker);
    assert!(
        queued <= MAX_UNSENT_RESPONSES as u64,
        "{queued} answers queued for a member that reads none (bound {MAX_UNSENT_RESPONSES})"
    );
    assert!(
        pulled.load(Ordering::Relaxed) < TOTAL,
        "the broker read every request of a member that reads no answer"
    );
}

#[tokio::test]
async fn offsets_of_invented_groups_expire_when_they_have_no_members() {
    let mut broker = Broker::start_with(&[
        "--offsets-retention-ms",
        "300",
        "--retention-check-ms",
        "100",
    ]);
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Always).await;
    append(&mut c, "t", 0, recs("r", 0..3)).await;
    for g in 0..50 {
        commit(&mut c, &format!("invented-{g}"), "t", 0, 2).await;
    }
    assert_eq!(list_groups(&mut c, "").await.len(), 50);
    within("the offsets expire", async {
        while !list_groups(&mut c, "").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        get_offsets(&mut c, "invented-3", "t").await[0]
            .committed
            .is_none()
    );
    broker.stop().await;
    broker.restart();
    let mut c = broker.client().await;
    assert!(
        list_groups(&mut c, "").await.is_empty(),
        "expired offsets came back after a restart"
    );
}
