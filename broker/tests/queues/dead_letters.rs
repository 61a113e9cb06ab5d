//! Dead letters: after `max_deliveries` unacked leases, and on REJECT.

use spool_proto::v1::*;

use crate::common::*;
use crate::*;

fn header<'a>(r: &'a Record, key: &str) -> &'a str {
    let h = r
        .headers
        .iter()
        .find(|h| h.key == key)
        .unwrap_or_else(|| panic!("no header {key} in {:?}", r.headers));
    std::str::from_utf8(&h.value).unwrap()
}

#[tokio::test]
async fn the_last_unacked_attempt_dead_letters_the_record_with_its_history() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    let original = Record {
        key: "k".into(),
        value: "payload".into(),
        headers: vec![
            Header {
                key: "app".into(),
                value: "x".into(),
            },
            Header {
                key: "spool-dead-letter-reason".into(),
                value: "stale".into(),
            },
        ],
        timestamp_ms: 1_234,
        ..Record::default()
    };
    append(&mut c, "jobs", 0, vec![original]).await;
    create_queue(&mut c, "jobs", "q", fast(150, 3)).await;
    // Attempt 1 and 2 expire, attempt 3 is nacked: that was the last one.
    for attempt in 1..=3 {
        let d = receive_n(&mut c, "jobs", "q", 1).await;
        assert_eq!(d[0].attempt, attempt);
        if attempt == 3 {
            let r = settle(
                &mut c,
                "jobs",
                "q",
                vec![settlement(&d[0], SettleAction::Nack, None)],
            )
            .await;
            assert_eq!(r, vec![SettleResult::Ok]);
        }
    }
    let q = wait_queue(&mut c, "jobs", "q", "dead-lettered", |q| {
        q.dead_lettered_total == 1
    })
    .await;
    assert_eq!(q.partitions[0].ack_floor, 1);
    assert!(receive(&mut c, "jobs", "q", 10, 300).await.is_empty());
    let letters = read_to_end(&mut c, "jobs.q.dlq", 0, 0).await;
    assert_eq!(letters.len(), 1, "exactly one dead letter");
    let l = &letters[0];
    assert_eq!((&l.key[..], &l.value[..]), (&b"k"[..], &b"payload"[..]));
    assert_eq!(header(l, "app"), "x");
    assert_eq!(header(l, "spool-dead-letter-topic"), "jobs");
    assert_eq!(header(l, "spool-dead-letter-partition"), "0");
    assert_eq!(header(l, "spool-dead-letter-offset"), "0");
    assert_eq!(header(l, "spool-dead-letter-attempts"), "3");
    assert_eq!(header(l, "spool-dead-letter-reason"), "max deliveries");
    assert_eq!(header(l, "spool-dead-letter-timestamp-ms"), "1234");
    let reasons = l
        .headers
        .iter()
        .filter(|h| h.key == "spool-dead-letter-reason")
        .count();
    assert_eq!(
        reasons, 1,
        "the record's own spool-dead-letter-* headers are replaced"
    );
}

#[tokio::test]
async fn reject_dead_letters_at_once_with_the_reason() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "jobs", 1, FsyncPolicy::Always).await;
    append(&mut c, "jobs", 0, recs("r", 0..2)).await;
    create_queue(&mut c, "jobs", "q", fast(30_000, 5)).await;
    let ds = receive_n(&mut c, "jobs", "q", 2).await;
    let mut reject = settlement(&ds[1], SettleAction::Reject, None);
    reject.reason = "bad input".into();
    assert_eq!(
        settle(&mut c, "jobs", "q", vec![reject]).await,
        vec![SettleResult::Ok]
    );
    wait_queue(&mut c, "jobs", "q", "rejected", |q| {
        q.dead_lettered_total == 1
    })
    .await;
    let letters = read_to_end(&mut c, "jobs.q.dlq", 0, 0).await;
    assert_eq!(values(&letters), vec!["r-1"]);
    assert_eq!(header(&letters[0], "spool-dead-letter-reason"), "bad input");
    assert_eq!(header(&letters[0], "spool-dead-letter-attempts"), "1");
    // The other record is still leased and settles normally.
    ack_all(&mut c, "jobs", "q", &ds[..1]).await;
    let q = describe_queue(&mut c, "jobs", "q").await;
    assert_eq!((q.acked_total, q.partitions[0].ack_floor), (1, 2));
}
